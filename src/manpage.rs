//! The manual page, rendered from the command line's own definition, so
//! that it says what `--help` says.

/// The manual page mxpin(1) of the command line `cmd` (clap's): every
/// command with its options, and the exit status of each (`exit_top` for
/// the whole). It starts with `.TH`.
pub fn man_page(
    cmd: clap::Command,
    exit_top: &str,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let top = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    let mut roff = roff::Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands() {
        let name = format!("mxpin {}", sub.get_name());
        roff.control("SS", [name.as_str()]);
        let usage = sub.clone().bin_name(&name).render_usage().to_string();
        roff.control("B", [usage.trim_start_matches("Usage: ")]);
        roff.control("PP", [] as [&str; 0]);
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            roff.text([roff::roman(about.to_string())]);
        }
        for arg in sub.get_arguments() {
            if arg.is_global_set() || arg.is_hide_set() || arg.get_id() == "help" {
                continue;
            }
            let value = match arg.get_value_names() {
                Some(names) => names.iter().map(|n| format!("<{n}>")).collect::<Vec<_>>(),
                None => vec![format!("<{}>", arg.get_id().as_str().to_uppercase())],
            }
            .join(" ");
            let takes = arg.get_action().takes_values();
            let flag = match (arg.get_short(), arg.get_long()) {
                (Some(s), Some(l)) => format!("-{s}, --{l}"),
                (None, Some(l)) => format!("--{l}"),
                (Some(s), None) => format!("-{s}"),
                (None, None) => String::new(),
            };
            let name = match (flag.is_empty(), takes) {
                (true, _) => value,
                (false, true) => format!("{flag} {value}"),
                (false, false) => flag,
            };
            let mut help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if takes && !defaults.is_empty() {
                help.push_str(&format!(" [default: {}]", defaults.join(", ")));
            }
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if !values.is_empty() && arg.get_long().is_none() {
                help.push_str(&format!(" [possible values: {}]", values.join(", ")));
            }
            roff.control("TP", [] as [&str; 0]);
            roff.text([roff::bold(name)]);
            roff.text([roff::roman(help)]);
        }
        if let Some(exit) = sub.get_after_help() {
            roff.control("PP", [] as [&str; 0]);
            roff.text([roff::roman(exit.to_string())]);
        }
    }
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roff::roman(exit_top)]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roff::roman(
        "The README (/usr/share/doc/mxpin/README.md in the Debian package) for the inventory \
         format and what apply does on a host.",
    )]);
    roff.to_writer(&mut page)?;
    top.render_version_section(&mut page)?;
    // Each part above starts with the roff crate's preamble (two lines that
    // define the apostrophe string); the page gets it once, after `.TH`.
    let page = String::from_utf8_lossy(&page).into_owned();
    let preamble = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    let body = page.replace(preamble, "");
    let (title, rest) = body.split_once('\n').unwrap_or((&body, ""));
    write!(out, "{title}\n{preamble}{rest}")
}
