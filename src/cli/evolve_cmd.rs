//! `zipmerge evolve`: flags -> [`EvolvePlan`] -> [`zipmerge::ops::evolve::evolve`] -> the
//! search's files and the results table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zipmerge::merge::{EvalPlan, Method};
use zipmerge::ops::evolve::{evolve, EvolvePlan, Fitness, TaskVectorSearch};
use zipmerge::rewrite::path::Source;
use zipmerge::search::genome::SearchSpace;

use super::common::{
    check_out, command_line, experiment_error, finite, given_flags, merge_error, usage,
};
use super::merge_args::{DataArgs, MergeSettings, TaskVectorArgs, TASK_VECTOR_METHODS};
use super::printer::Printer;

/// The paper's alpha grid (`reproduce grid`).
const PAPER_ALPHAS: [f64; 6] = [1.0, 0.5, 0.3, 0.1, 0.01, 0.0001];
/// The paper's beta grid (`reproduce grid`).
const PAPER_BETAS: [f64; 6] = [1.0, 0.25, 0.125, 0.075, 0.0375, 0.0];

/// `zipmerge evolve` flags.
#[derive(Args, Debug, Clone)]
pub struct EvolveArgs {
    /// Source model folders (N >= 2).
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Stop of the merges (fixed unless `--search-stop` makes it a gene).
    #[arg(long, default_value = "full")]
    pub stop: String,
    /// Make the stop a gene choosing among these stops (two or more, e.g. `13/20,19/20,full`).
    #[arg(long, value_delimiter = ',')]
    pub search_stop: Vec<String>,
    /// Make REPAIR on/off a gene (parameter space).
    #[arg(long)]
    pub search_repair: bool,
    /// Search space: `ps` (the method's knobs per feature space / layer group), `dfs` (a path of
    /// residual blocks through the Permute-aligned models and their merge) or `both`.
    #[arg(long, default_value = "ps", value_parser = ["ps", "dfs", "both"])]
    pub space: String,
    /// Where a data-flow path's stem and head come from: `a` (model A, as Sakana's) or
    /// `merged`.
    #[arg(long, default_value = "a", value_parser = ["a", "merged"])]
    pub ends: String,
    /// Times each block slot may repeat in a data-flow path (Sakana's r). Only 1: the path
    /// keeps the architecture's depth, so the result is a checkpoint of the same architecture.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Evaluations of the search (the default recipe and the grid are extra).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(usize))]
    pub budget: usize,
    /// CMA-ES population (default 4 + floor(3 ln n), n the number of genes).
    #[arg(long)]
    pub population: Option<usize>,
    /// Initial CMA-ES step size in units of each gene's range (the paper's 1/6).
    #[arg(long, default_value_t = 1.0 / 6.0, value_parser = finite)]
    pub sigma: f64,
    /// Validation images, drawn (seeded) from the train folder's images that neither the probe
    /// nor the BN-reset draw uses; the fitness is measured on them.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(usize))]
    pub val_images: usize,
    /// Fitness: `joint` accuracy or `avg` (mean task accuracy), on the validation images.
    #[arg(long, default_value = "joint", value_parser = ["joint", "avg"])]
    pub fitness: String,
    /// Skip the reference grid (ZipIt!: the paper's 36-cell alpha/beta grid at the stop,
    /// scored on the same validation images).
    #[arg(long)]
    pub no_grid: bool,
    /// Skip the test evaluation at the end (no test image is read at all).
    #[arg(long)]
    pub no_test: bool,
    /// Continue the search saved in `--out`'s `state.json` (same options).
    #[arg(long)]
    pub resume: bool,
    /// Output folder: state.json, trace.csv, best.json, model/, fitness.png, evolve.json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub settings: MergeSettings,
    #[command(flatten)]
    pub io: DataArgs,
    #[command(flatten)]
    pub task_vectors: TaskVectorArgs,
}

/// Runs `zipmerge evolve`.
pub fn exec(a: EvolveArgs, p: &mut Printer) -> Result<()> {
    let space = SearchSpace::parse(&a.space).map_err(merge_error)?;
    let given = given_flags();
    if space.has_path() {
        for f in [
            "--method",
            "--alpha",
            "--beta",
            "--merge-eps",
            "--repair",
            "--refit",
        ] {
            if given.contains(f) {
                return Err(usage(format!(
                    "{f} has no effect with --space {}: a data-flow path aligns the models with permute at merge epsilon 0 and is not corrected",
                    a.space
                )));
            }
        }
        if a.search_repair || !a.search_stop.is_empty() {
            return Err(usage(format!(
                "--search-repair/--search-stop are parameter-space genes; --space {} routes whole networks (stop full)",
                a.space
            )));
        }
    } else if given.contains("--ends") {
        return Err(usage(
            "--ends applies to --space dfs or both (the ends of a data-flow path)",
        ));
    }
    if a.repeat != 1 {
        return Err(usage(format!(
            "--repeat {}: only 1 is supported: a path longer than the network needs a deeper architecture than the models' (a ResNet with more blocks per stage), which zipmerge cannot build yet",
            a.repeat
        )));
    }
    if given.contains("--repeat") && !space.has_path() {
        return Err(usage("--repeat applies to --space dfs or both"));
    }
    let name = a.settings.matcher.method.clone();
    let (settings, task_vectors) = if TASK_VECTOR_METHODS.contains(&name.as_str()) {
        // a search of task-vector merges: the alignment options have no effect
        let refused = [
            "--stop",
            "--alpha",
            "--beta",
            "--cca-reg",
            "--dual-lambda",
            "--similarity",
            "--repair",
            "--refit",
            "--refit-ridge",
            "--no-endpoint-bn-reset",
            "--no-rebasin-bn-reset",
            "--search-stop",
            "--search-repair",
            "--probe-images",
            "--no-probe-augment",
            "--merge-eps",
            "--probe",
        ];
        if let Some(f) = refused.iter().find(|f| given.contains(**f)) {
            return Err(usage(format!(
                "{f} has no effect with --method {name} (a task-vector merge has no statistics, matching or stop)"
            )));
        }
        if space != SearchSpace::Ps {
            return Err(usage(format!(
                "--space {}: task-vector merges have parameter-space genes only (ps)",
                a.space
            )));
        }
        let Some(base) = a.task_vectors.base.clone() else {
            return Err(usage(format!(
                "--method {name} needs --base BASE (the model the --model fine-tunes start from)"
            )));
        };
        let tv = a.task_vectors.settings(&name, a.settings.seed)?;
        let mut s = zipmerge::merge::MergeSettings::new(Method::WeightAvg);
        s.bn_reset_images = a.settings.bn_reset_images.0;
        s.batch_size = a.settings.batch_size;
        s.seed = a.settings.seed;
        (s, Some(TaskVectorSearch { base, settings: tv }))
    } else {
        if let Some(f) = a.task_vectors.given().first() {
            return Err(usage(format!(
                "{f} applies to the task-vector methods ({}), not --method {name}",
                TASK_VECTOR_METHODS.join(", ")
            )));
        }
        let mut settings = a.settings.clone();
        if space.has_path() {
            settings.matcher.method = "permute".into();
        }
        (settings.library()?, None)
    };
    let zipit_ps = matches!(settings.method, Method::Zipit { .. })
        && space == SearchSpace::Ps
        && task_vectors.is_none();
    if a.no_grid && !zipit_ps {
        use zipmerge::progress::Observer;
        p.warn("note: --no-grid has no effect: the reference grid is ZipIt!'s alpha/beta grid, run for --space ps with --method zipit only");
    }
    let mut inputs = a.models.clone();
    inputs.extend(a.task_vectors.base.clone());
    check_out(&a.out, &inputs, false)?;
    let io = a.io.inputs(&a.settings, p)?;
    let plan = EvolvePlan {
        models: a.models.clone(),
        stop: a.stop.clone(),
        search_stops: a.search_stop.clone(),
        search_repair: a.search_repair,
        settings,
        task_vectors,
        space,
        ends: if a.ends == "merged" {
            Source::Merged
        } else {
            Source::Model(0)
        },
        budget: a.budget,
        population: a.population,
        sigma: a.sigma,
        val_images: a.val_images,
        fitness: if a.fitness == "avg" {
            Fitness::Avg
        } else {
            Fitness::Joint
        },
        grid: (!a.no_grid).then(|| (PAPER_ALPHAS.to_vec(), PAPER_BETAS.to_vec())),
        probe_dir: io.probe_dir,
        eval: (!a.no_test).then_some(EvalPlan {
            root: io.test_root,
            tasks: None,
        }),
        cache_gib: io.cache_gib,
        device: io.device,
        backend: a.io.backend.backend.to_string(),
        command: command_line(),
        out: a.out.clone(),
        resume: a.resume,
    };
    let report = evolve(&plan, p).map_err(experiment_error)?;
    let text = format!(
        "{}\n{} evaluations in {:.0} s ({:.2} s each), {} statistics pass(es)",
        report.table(),
        report.evaluations,
        report.search_seconds,
        report.seconds_per_evaluation,
        report.statistics_passes
    );
    p.emit(&report, &text, Some(format!("wrote {}", a.out.display())))
}
