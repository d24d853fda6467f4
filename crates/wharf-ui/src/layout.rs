//! The page around every page: navigation, who is logged in, the main landmark; and the
//! small pieces several pages use (copy buttons, badges, pagers).

use maud::{DOCTYPE, Markup, html};

use crate::{Ctx, Visitor};

pub(crate) fn page(ctx: &Ctx, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Wharf" }
                link rel="stylesheet" href="/ui/assets/ui.css";
                script src="/ui/assets/ui.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    nav aria-label="Main" {
                        a.brand href="/ui/" { "Wharf" }
                        ul {
                            li { a href="/ui/" { "Repositories" } }
                            li { a href="/ui/mirrors" { "Mirrors" } }
                            li { a href="/ui/storage" { "Storage" } }
                        }
                    }
                    div.who {
                        @match &ctx.visitor {
                            Visitor::Open => {}
                            Visitor::Anonymous => {
                                span { "Anonymous" }
                                " "
                                a.button #login-link href="/ui/login" { "Log in" }
                            }
                            Visitor::User(u) => {
                                span #whoami { "Signed in as " strong { (u) } }
                                " "
                                form.inline method="post" action="/ui/logout" {
                                    input type="hidden" name="csrf" value=(ctx.csrf);
                                    button type="submit" #logout { "Log out" }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
                footer { "Wharf · partial mirrors that keep every digest" }
            }
        }
    }
}

/// A button that copies `text`, labelled for screen readers with what it copies.
pub(crate) fn copy(text: &str, what: &str) -> Markup {
    html! {
        button.copy type="button" data-copy=(text) aria-label=(format!("Copy {what}")) { "Copy" }
    }
}

/// Inline code with a copy button.
pub(crate) fn code_copy(text: &str, what: &str) -> Markup {
    html! { span.codecopy { code { (text) } " " (copy(text, what)) } }
}

/// A state shown as a word (never by colour alone).
pub(crate) fn badge(class: &str, text: &str) -> Markup {
    html! { span class=(format!("badge {class}")) { (text) } }
}
