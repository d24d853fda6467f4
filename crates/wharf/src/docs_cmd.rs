//! `wharf completions SHELL` and `wharf man`: generated from the clap definition, so they
//! never drift from the commands. `dist/wharf.1` is `wharf man` checked in (a test keeps it
//! current).

use std::io::Write;

use clap::CommandFactory;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to print completions for.
    shell: Shell,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "wharf", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(())
}

/// The man page of `wharf`: one page, with a section per command and its options (rather than
/// a page per command that `man` would not find), as roff.
pub fn man_page() -> anyhow::Result<Vec<u8>> {
    let cmd = crate::Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands() {
        render_command(&mut out, &format!("wharf {}", sub.get_name()), sub)?;
        for nested in sub.get_subcommands() {
            render_command(&mut out, &format!("wharf {} {}", sub.get_name(), nested.get_name()), nested)?;
        }
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// `.SS wharf NAME`, what it does, then one `.TP` per argument.
fn render_command(out: &mut Vec<u8>, name: &str, cmd: &clap::Command) -> std::io::Result<()> {
    writeln!(out, ".SS \"{}\"", roff(name))?;
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        writeln!(out, "{}", roff(&about.to_string()))?;
    }
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set() && a.get_id() != "help") {
        let mut names = Vec::new();
        if let Some(s) = arg.get_short() {
            names.push(format!("\\fB\\-{s}\\fR"));
        }
        if let Some(l) = arg.get_long() {
            names.push(format!("\\fB\\-\\-{}\\fR", roff(l)));
        }
        let value = arg
            .get_value_names()
            .map(|v| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
        let head = if names.is_empty() {
            format!("\\fI{}\\fR", roff(&value))
        } else if arg.get_action().takes_values() {
            format!("{} \\fI{}\\fR", names.join(", "), roff(&value))
        } else {
            names.join(", ")
        };
        writeln!(out, ".TP\n{head}")?;
        if let Some(help) = arg.get_long_help().or(arg.get_help()) {
            writeln!(out, "{}", roff(&help.to_string()))?;
        }
        let possible: Vec<String> =
            arg.get_possible_values().iter().map(|p| p.get_name().to_owned()).collect();
        if !possible.is_empty() && names.is_empty() {
            writeln!(out, "One of: {}.", roff(&possible.join(", ")))?;
        }
    }
    Ok(())
}

/// Text safe in a roff line: backslashes and hyphens escaped, no line starting with a dot.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| if l.starts_with('.') || l.starts_with('\'') { format!("\\&{l}") } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn man() -> anyhow::Result<()> {
    std::io::stdout().write_all(&man_page()?)?;
    Ok(())
}
