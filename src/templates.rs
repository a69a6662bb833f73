//! The text of every table mxpin writes lives in tera templates under
//! `templates/`, built into the binary and overridable per file with
//! `--templates DIR` (same relative names, e.g. `DIR/postfix/transport.tera`).

use std::path::Path;

const BUILTIN: &[(&str, &str)] = &[
    (
        "postfix/transport.tera",
        include_str!("../templates/postfix/transport.tera"),
    ),
    (
        "postfix/tls_policy.tera",
        include_str!("../templates/postfix/tls_policy.tera"),
    ),
    (
        "postfix/relay_domains.tera",
        include_str!("../templates/postfix/relay_domains.tera"),
    ),
    (
        "postfix/relay_recipients.tera",
        include_str!("../templates/postfix/relay_recipients.tera"),
    ),
    (
        "postfix/relay_clientcerts.tera",
        include_str!("../templates/postfix/relay_clientcerts.tera"),
    ),
    (
        "exim/debian-main.conf.tera",
        include_str!("../templates/exim/debian-main.conf.tera"),
    ),
    (
        "exim/main.conf.tera",
        include_str!("../templates/exim/main.conf.tera"),
    ),
    (
        "exim/acl_rcpt.conf.tera",
        include_str!("../templates/exim/acl_rcpt.conf.tera"),
    ),
    (
        "exim/routers.conf.tera",
        include_str!("../templates/exim/routers.conf.tera"),
    ),
    (
        "exim/transports.conf.tera",
        include_str!("../templates/exim/transports.conf.tera"),
    ),
    (
        "exim/relay_recipients.tera",
        include_str!("../templates/exim/relay_recipients.tera"),
    ),
    (
        "exim/pins.tera",
        include_str!("../templates/exim/pins.tera"),
    ),
    (
        "fetchmail/fetchmailrc.tera",
        include_str!("../templates/fetchmail/fetchmailrc.tera"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: cannot read template: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("template {name}: {message}")]
    Tera { name: String, message: String },
}

fn tera_message(e: &tera::Error) -> String {
    // tera nests the useful part in its source chain.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg.replace('\n', " ")
}

pub struct Templates {
    tera: tera::Tera,
}

impl Templates {
    /// The built-in templates, each replaced by `dir/NAME` where that exists.
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        for (name, builtin) in BUILTIN {
            let text = match dir.map(|d| d.join(name)).filter(|p| p.exists()) {
                Some(path) => {
                    std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
                        path: path.display().to_string(),
                        source,
                    })?
                }
                None => builtin.to_string(),
            };
            tera.add_raw_template(name, &text)
                .map_err(|e| TemplateError::Tera {
                    name: name.to_string(),
                    message: tera_message(&e),
                })?;
        }
        Ok(Templates { tera })
    }

    pub fn render(&self, name: &str, context: &tera::Context) -> Result<String, TemplateError> {
        self.tera
            .render(name, context)
            .map_err(|e| TemplateError::Tera {
                name: name.to_string(),
                message: tera_message(&e),
            })
    }
}
