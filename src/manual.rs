//! `kite completions SHELL` and `kite man DIR`: shell completions and manual pages, generated
//! from the same clap definitions that parse the command line, so they cannot drift from it.

use std::io;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;

/// The completion script for `shell`, on stdout. Made in memory first: clap_complete panics
/// when its writer fails, and stdout may be a closed pipe (`| head`).
pub fn completions(shell: clap_complete::Shell) -> io::Result<()> {
    let mut cmd = Cli::command();
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kite", &mut text);
    io::Write::write_all(&mut io::stdout().lock(), &text)
}

/// `kite.1` and one page per visible subcommand (`kite-run.1`, ...) in `dir`; the names of the
/// files written.
pub fn man_pages(dir: &Path) -> io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut written = vec![write_page(dir, "kite", cmd.clone())?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("kite-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("kite {}", sub.get_name()));
        written.push(write_page(dir, &name, page)?);
    }
    Ok(written)
}

/// One page, written to a temporary name and renamed, so a reader never sees half of one.
fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> io::Result<String> {
    let mut text = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut text)?;
    let file = format!("{name}.1");
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, dir.join(&file))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_kite_and_each_visible_subcommand() {
        let dir = std::env::temp_dir().join(format!("kite-man-{}", std::process::id()));
        let files = man_pages(&dir).unwrap();
        assert!(files.contains(&"kite.1".to_string()));
        assert!(files.contains(&"kite-run.1".to_string()));
        assert!(files.contains(&"kite-bench.1".to_string()));
        assert!(!files.iter().any(|f| f.contains("workload")), "{files:?}");
        let run = std::fs::read_to_string(dir.join("kite-run.1")).unwrap();
        assert!(run.contains("api\\-sock"), "the run page lists --api-sock");
        assert!(
            run.contains("Examples:"),
            "the run page ends with the examples"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
