//! `wharf mirrors docker://HOST [--json] [--run NAME]`: a Wharf registry's own mirrors (its
//! `/v2/_wharf/mirrors` extension) as a table or JSON, or start one now.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use serde::Deserialize;
use wharf_sync::report::human_bytes;

use crate::inspect::RegistryFlags;
use crate::report_cmd::{parse_registry, registry_message};

#[derive(Debug, clap::Args)]
pub struct MirrorsArgs {
    /// docker://HOST[:PORT] of a Wharf registry.
    registry: String,
    /// Print the registry's JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Start a run of this mirror now (needs push rights on its dest).
    #[arg(long, value_name = "NAME")]
    run: Option<String>,
    #[command(flatten)]
    flags: RegistryFlags,
}

/// `GET /v2/_wharf/mirrors`, as the server writes it.
#[derive(Debug, Deserialize, serde::Serialize)]
struct Mirrors {
    mirrors: Vec<Mirror>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Mirror {
    name: String,
    source: String,
    dest: String,
    state: String,
    next_run: Option<String>,
    last_run: Option<LastRun>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct LastRun {
    started: String,
    finished: String,
    ok: bool,
    images: u64,
    bytes_copied: u64,
    bytes_existing: u64,
    bytes_filtered: u64,
    failures: Vec<Failure>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Failure {
    image: String,
    error: String,
}

pub async fn run(args: MirrorsArgs) -> anyhow::Result<()> {
    let host = parse_registry(&args.registry, "mirrors")?;
    let client = args.flags.client(&host)?;
    if let Some(name) = &args.run {
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
        if !valid {
            bail!("{name:?} is not a mirror name (letters, digits, '.', '_', '-')");
        }
        let (status, _, body) = client.post_raw(&format!("/v2/_wharf/mirrors/{name}/run")).await?;
        let said = registry_message(&body).map(|m| format!(": {m}")).unwrap_or_default();
        match status {
            202 => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if args.json {
                    println!("{v}");
                } else if v["already_running"] == true {
                    println!("mirror {name} is running; another run will follow it");
                } else {
                    println!("started a run of mirror {name} on {host}");
                }
                return Ok(());
            }
            404 => {
                bail!("{host} has no mirror named {name:?}{said} (wharf mirrors docker://{host} lists them)")
            }
            401 | 403 => bail!(
                "{host} refused to run mirror {name} (HTTP {status}{said}): it needs push rights on the \
                 mirror's dest; log in with --creds USER:PASSWORD"
            ),
            _ => bail!("{host} did not start mirror {name} (HTTP {status}{said})"),
        }
    }
    let (status, _, body) = client.get_raw("/v2/_wharf/mirrors").await?;
    if status != 200 {
        let said = registry_message(&body).map(|m| format!(": {m}")).unwrap_or_default();
        match status {
            401 | 403 => bail!(
                "{host} refused its mirrors list (HTTP {status}{said}); it needs what the catalog needs: \
                 log in (--creds USER:PASSWORD)"
            ),
            _ => bail!(
                "{host} does not list mirrors (GET /v2/_wharf/mirrors answered HTTP {status}{said}): it is \
                 not a Wharf registry, or one without [[mirrors]] support"
            ),
        }
    }
    let mirrors: Mirrors = serde_json::from_slice(&body).context("reading the registry's mirrors list")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&mirrors)?);
    } else {
        print!("{}", table(&host, &mirrors));
    }
    Ok(())
}

fn table(host: &str, m: &Mirrors) -> String {
    let mut out = String::new();
    if m.mirrors.is_empty() {
        let _ = writeln!(out, "docker://{host} has no mirrors you may see ([[mirrors]] in its config)");
        return out;
    }
    let rows: Vec<[String; 7]> = m
        .mirrors
        .iter()
        .map(|x| {
            let (last, bytes, failures) = match &x.last_run {
                None => ("never".to_owned(), "-".to_owned(), "-".to_owned()),
                Some(r) => (
                    format!("{} {}", r.finished, if r.ok { "ok" } else { "FAILED" }),
                    format!(
                        "{} copied, {} there, {} left out",
                        human_bytes(r.bytes_copied),
                        human_bytes(r.bytes_existing),
                        human_bytes(r.bytes_filtered)
                    ),
                    r.failures.len().to_string(),
                ),
            };
            [
                x.name.clone(),
                format!("{} -> {}", x.source, x.dest),
                x.state.clone(),
                last,
                bytes,
                failures,
                x.next_run.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["NAME", "SOURCE -> DEST", "STATE", "LAST RUN", "BYTES", "FAILURES", "NEXT RUN"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        l.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&header));
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        let _ = writeln!(out, "{}", line(&cells));
    }
    for x in &m.mirrors {
        for f in x.last_run.iter().flat_map(|r| &r.failures) {
            let _ = writeln!(out, "{}: {}: {}", x.name, f.image, f.error);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_a_table_with_failures_below() {
        let m: Mirrors = serde_json::from_str(
            r#"{"mirrors":[{"name":"vendor-app","source":"docker://r.io/team/app","dest":"mirror/app",
            "state":"idle","next_run":"2026-01-01T00:30:00Z","last_run":{"started":"2026-01-01T00:00:00Z",
            "finished":"2026-01-01T00:00:05Z","ok":false,"images":2,"bytes_copied":2048,"bytes_existing":0,
            "bytes_filtered":10,"failures":[{"image":"docker://r.io/team/app:v9","error":"gone"}]}},
            {"name":"never","source":"docker://r.io/x","dest":"m/x","state":"running","next_run":"2026-01-01T00:00:00Z","last_run":null}]}"#,
        )
        .unwrap();
        let t = table("h:5000", &m);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].ends_with("NEXT RUN"), "{t}");
        assert!(
            lines[1].contains("vendor-app")
                && lines[1].contains("FAILED")
                && lines[1].contains("2.0 KiB copied"),
            "{t}"
        );
        assert!(lines[2].contains("running") && lines[2].contains("never"), "{t}");
        assert_eq!(lines[3], "vendor-app: docker://r.io/team/app:v9: gone");
    }
}
