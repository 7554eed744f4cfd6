//! The one place the CLI writes to the terminal: progress bars, informational lines, notes and
//! warnings, built once from the global `-q/--quiet`, `-v/--verbose`, `--no-progress` and
//! `--json` flags and handed to every subcommand (it is the library's [`Observer`]).

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use zipmerge::progress::Observer;

/// Output flags every subcommand takes (before or after the subcommand's name).
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct OutputArgs {
    /// No progress bars and no informational lines (notes, warnings and errors still print).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More detail: `merge -v` prints the seconds of every phase.
    #[arg(long, short, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// No progress bars (informational lines still print).
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Print the result as JSON on stdout only (implies no progress bars and no informational
    /// lines).
    #[arg(long, global = true)]
    pub json: bool,
}

/// Writes progress to stderr (bars hidden when stderr is not a terminal, in `--json` mode, with
/// `-q` or `--no-progress`), results to stdout.
#[derive(Debug)]
pub struct Printer {
    /// Informational lines.
    info: bool,
    /// Progress bars.
    progress: bool,
    /// JSON mode.
    json: bool,
    /// Verbose mode.
    verbose: bool,
    /// The bar of the phase in progress.
    bar: Option<ProgressBar>,
}

impl Printer {
    /// The printer of the global output flags.
    pub fn new(o: &OutputArgs) -> Self {
        let quiet = o.quiet || o.json;
        Self {
            info: !quiet,
            progress: !quiet && !o.no_progress,
            json: o.json,
            verbose: o.verbose && !o.json,
            bar: None,
        }
    }

    /// Detail printed on stderr with `-v` only (`merge -v`: the seconds of every phase).
    pub fn detail(&self, text: &str) {
        if self.verbose {
            eprint!("{text}");
        }
    }

    /// A command's result: `value` as one line of JSON on stdout in `--json` mode; otherwise
    /// `text` on stdout and the summary `note`, if any, on stderr.
    ///
    /// # Errors
    /// If `value` cannot be serialised.
    pub fn emit(
        &self,
        value: &impl serde::Serialize,
        text: &str,
        note: Option<String>,
    ) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(value)?);
            return Ok(());
        }
        print!("{text}");
        if let Some(n) = note {
            eprintln!("{n}");
        }
        Ok(())
    }

    /// Prints `line` on stderr above the bar in progress.
    fn suspend(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

impl Observer for Printer {
    fn begin(&mut self, label: &str, total: u64) {
        self.end();
        if !self.progress {
            return;
        }
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {prefix}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        b.set_message(label.to_string());
        self.bar = Some(b);
    }

    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn status(&mut self, text: &str) {
        if let Some(b) = &self.bar {
            b.set_prefix(text.to_string());
        }
    }

    fn end(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn info(&mut self, line: &str) {
        if self.info {
            self.suspend(line);
        }
    }

    fn warn(&mut self, line: &str) {
        self.suspend(line);
    }
}
