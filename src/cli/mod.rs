//! Argument parsing and dispatch. Each subcommand lives in its own file with a thin `exec`.

mod bench_cmd;
mod bn_reset_cmd;
mod common;
mod distill_cmd;
mod eval_cmd;
mod evolve_cmd;
mod experiment_cmd;
mod inspect_cmd;
mod interop_cmd;
mod interpolate_cmd;
mod match_cmd;
mod merge_args;
mod merge_cmd;
mod printer;
mod recipe_overrides;
mod train_cmd;

use clap::{Parser, Subcommand};

pub use common::Usage;

pub use zipmerge::util::one_line;

/// zipmerge: merge two (or more) vision networks trained from different initializations on
/// different tasks into one network, without training (ZipIt! and baselines).
#[derive(Parser, Debug)]
#[command(name = "zipmerge", version, about, long_about = None)]
pub struct Cli {
    /// Output flags (global: before or after the subcommand).
    #[command(flatten)]
    pub output: printer::OutputArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train an endpoint model on a class subset.
    Train(train_cmd::TrainArgs),
    /// Distil teachers into a merged (or any) student: multi-teacher distillation with memory
    /// replay (SAM-CLIP), a head stage then the whole network.
    Distill(distill_cmd::DistillArgs),
    /// Evaluate one model, a multi-head model, or an ensemble (joint / per-task / avg accuracy).
    Eval(eval_cmd::EvalArgs),
    /// Top-k classes for individual images.
    Predict(eval_cmd::PredictArgs),
    /// Merge N models: statistics, matching (ZipIt!/Permute/W.Avg/Git Re-Basin), rewriting,
    /// BN reset, evaluation.
    Merge(merge_args::MergeArgs),
    /// Run a matcher alone on a covariance/correlation matrix.
    Match(match_cmd::MatchArgs),
    /// Re-estimate the BatchNorm statistics of a model (reference doc §4.4).
    BnReset(bn_reset_cmd::BnResetArgs),
    /// Architecture, width, head, parameters, FLOPs, feature spaces and valid stops of a model.
    Inspect(inspect_cmd::InspectArgs),
    /// Search merge recipes with CMA-ES (parameter space, data-flow space or both), scored on a
    /// validation split of the train folder; writes best.json (a recipe `merge --recipe`
    /// replays), the best model, trace.csv and fitness.png.
    Evolve(evolve_cmd::EvolveArgs),
    /// Accuracy and loss along (1-t) A + t pi(B), B aligned by Permute, Git Re-Basin or not at
    /// all: the barrier of linear mode connectivity.
    Interpolate(interpolate_cmd::InterpolateArgs),
    /// Merge at every stop (statistics collected once) and write sweep.csv/json/png/svg.
    Sweep(experiment_cmd::SweepArgs),
    /// Reproduce the ZipIt! paper tables (`table1`).
    #[command(subcommand)]
    Reproduce(experiment_cmd::Reproduce),
    /// Throughput per backend: forward, statistics and BN-reset images/s, matcher times.
    Bench(bench_cmd::BenchArgs),
    /// Import a PyTorch / safetensors state_dict (official ZipIt! layout) as a zipmerge model.
    Import(interop_cmd::ImportArgs),
    /// Export a model as safetensors that the official PyTorch classes load (strict=True).
    Export(interop_cmd::ExportArgs),
}

/// Lets every option that takes a value accept a negative number as that value, in every
/// subcommand.
fn negative_numbers(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        if a.get_action().takes_values() && !a.is_positional() {
            a.allow_negative_numbers(true)
        } else {
            a
        }
    })
    .mut_subcommands(negative_numbers)
}

/// Parses the command line and runs the subcommand.
pub fn run() -> anyhow::Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    // `--lr -0.1` reaches the option's validator (which names the option) instead of being
    // taken for an unknown flag `-0`
    let cmd = negative_numbers(Cli::command());
    let parsed = cmd
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                // --help, --version
                let _ = e.print();
                std::process::exit(0);
            }
            // clap's message is several paragraphs (usage, tips): keep the first one (the
            // error and, e.g., the missing arguments) as one line, point to --help
            let text = match e.kind() {
                clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    "a subcommand is required".into()
                }
                _ => e.render().to_string(),
            };
            let first = text
                .split("\n\n")
                .next()
                .unwrap_or("error: bad command line");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {} (see --help)", one_line(first).replace(":;", ":"));
            std::process::exit(2);
        }
    };
    let mut p = printer::Printer::new(&cli.output);
    let p = &mut p;
    match cli.command {
        Command::Train(a) => train_cmd::exec(a, p),
        Command::Distill(a) => distill_cmd::exec(a, p),
        Command::Eval(a) => eval_cmd::exec(a, p),
        Command::Predict(a) => eval_cmd::exec_predict(a, p),
        Command::Merge(a) => merge_cmd::exec(a, p),
        Command::Match(a) => match_cmd::exec(a, p),
        Command::BnReset(a) => bn_reset_cmd::exec(a, p),
        Command::Inspect(a) => inspect_cmd::exec(a, p),
        Command::Evolve(a) => evolve_cmd::exec(a, p),
        Command::Interpolate(a) => interpolate_cmd::exec(a, p),
        Command::Sweep(a) => experiment_cmd::exec_sweep(a, p),
        Command::Reproduce(a) => experiment_cmd::exec_reproduce(a, p),
        Command::Bench(a) => bench_cmd::exec(a, p),
        Command::Import(a) => interop_cmd::exec_import(a, p),
        Command::Export(a) => interop_cmd::exec_export(a, p),
    }
}
