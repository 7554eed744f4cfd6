//! `zipmerge merge`: flags -> [`MergePlan`] -> [`zipmerge::ops::merge::run`] -> model folder +
//! `report.json`, and the accuracy table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use zipmerge::experiments::Inputs;
use zipmerge::merge::TaskVectorPlan;
use zipmerge::merge::{Combine, EvalPlan, MergePlan, RecipePlan};
use zipmerge::ops::task_vectors::run_task_vectors;

use super::common::{
    cache_gib, check_out, command_line, first_given, given_flags, merge_error, tasks_option, usage,
};
use super::merge_args::{MergeArgs, TASK_VECTOR_METHODS};
use super::printer::Printer;

/// Runs `zipmerge merge`.
pub fn exec(a: MergeArgs, p: &mut Printer) -> Result<()> {
    if let Some(path) = a.recipe.clone() {
        let recipe = super::recipe_overrides::recipe_with_overrides(&a, &path, &given_flags(), p)?;
        let mut inputs = recipe.models.clone();
        if let Combine::TaskVector { base, .. } = &recipe.combine {
            inputs.push(base.clone());
        }
        check_out(&a.out, &inputs, true)?;
        let plan = recipe.plan(
            cache_gib()?,
            a.io.backend.runner(p)?,
            &a.io.backend.backend.to_string(),
            command_line(),
        );
        return match plan {
            RecipePlan::Align(plan) => run_and_save(&plan, &a.out, p),
            RecipePlan::TaskVector(plan) => run_and_save_task_vectors(&plan, &a.out, p),
        };
    }
    if TASK_VECTOR_METHODS.contains(&a.settings.matcher.method.as_str()) {
        return exec_task_vectors(a, p);
    }
    if let Some(f) = a.task_vectors.given().first() {
        return Err(usage(format!(
            "{f} applies to the task-vector methods ({}), not --method {}",
            TASK_VECTOR_METHODS.join(", "),
            a.settings.matcher.method
        )));
    }
    let settings = a.settings.library()?;
    check_out(&a.out, &a.models, true)?;
    let tasks = tasks_option(&a.tasks)?;
    let io = a.io.inputs(&a.settings, p)?;
    warn_inputs(&a.models, &io, !a.no_eval, p);
    let plan = MergePlan {
        models: a.models.clone(),
        stop: a.stop.clone(),
        probe_dir: io.probe_dir,
        eval: (!a.no_eval).then_some(EvalPlan {
            root: io.test_root,
            tasks,
        }),
        cache_gib: io.cache_gib,
        device: io.device,
        backend: a.io.backend.backend.to_string(),
        command: command_line(),
        settings,
    };
    run_and_save(&plan, &a.out, p)
}

/// Runs `plan`, writes the merged model folder `out` and prints the report.
fn run_and_save(plan: &MergePlan, out: &Path, p: &mut Printer) -> Result<()> {
    let outcome = zipmerge::ops::merge::run(plan, p).map_err(merge_error)?;
    outcome
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    let r = &outcome.report;
    let label = format!("{} -> {}", r.label(), out.display());
    let text = r.table(&label);
    p.detail(&r.timings_text());
    let total = r.timings_seconds["total"];
    let note = format!("wrote {} ({total:.1}s)", out.display());
    p.emit(r, &text, Some(note))
}

/// Warnings about inputs that are legal but almost always a mistake: a model given twice (it
/// is merged with itself), an evaluation folder that is the probe folder or a `train` folder
/// (the accuracy would not be a test accuracy).
fn warn_inputs(models: &[PathBuf], io: &Inputs, eval: bool, p: &mut Printer) {
    use zipmerge::progress::Observer;
    let canon = |x: &Path| std::fs::canonicalize(x).unwrap_or_else(|_| x.to_path_buf());
    for (i, m) in models.iter().enumerate() {
        let c = canon(&zipmerge::checkpoint::model_dir(m));
        if models[..i]
            .iter()
            .any(|o| canon(&zipmerge::checkpoint::model_dir(o)) == c)
        {
            p.warn(&format!(
                "warning: --model {} is given twice: the merge combines a model with itself",
                m.display()
            ));
        }
    }
    if eval {
        let test = canon(&zipmerge::data::split_dir(&io.test_root, "test"));
        if test == canon(&io.probe_dir) {
            p.warn(&format!(
                "warning: the evaluation folder {} is the probe folder: the accuracy is measured on the images the merge was fit to, not a test accuracy",
                test.display()
            ));
        } else if test.file_name().is_some_and(|n| n == "train") {
            p.warn(&format!(
                "warning: the evaluation folder {} is a train folder: the reported accuracy is not a test accuracy (pass the data root, whose test/ is evaluated)",
                test.display()
            ));
        }
    }
}

/// `zipmerge merge --method task-arithmetic | ties | dare-ties | dare-linear --base B`:
/// flags -> [`TaskVectorPlan`] -> [`run_task_vectors`] -> model folder + `report.json`.
fn exec_task_vectors(a: MergeArgs, p: &mut Printer) -> Result<()> {
    let name = a.settings.matcher.method.clone();
    let s = &a.settings;
    // the alignment methods' options have no effect here: refuse them when changed
    let defaults = [
        ("--stop", a.stop != "full"),
        ("--alpha", s.matcher.alpha.is_some()),
        ("--beta", s.matcher.beta.is_some()),
        ("--cca-reg", s.matcher.cca_reg.is_some()),
        ("--dual-lambda", s.dual_lambda.is_some()),
        ("--similarity", s.similarity != "activation"),
        ("--repair", s.repair),
        ("--refit", s.refit != "none"),
        ("--no-endpoint-bn-reset", s.no_endpoint_bn_reset),
        ("--no-rebasin-bn-reset", s.no_rebasin_bn_reset),
    ];
    if let Some(f) = first_given(&defaults) {
        return Err(usage(format!(
            "{f} has no effect with --method {name} (a task-vector merge has no statistics, matching or stop: the whole network is merged)"
        )));
    }
    let Some(base) = a.task_vectors.base.clone() else {
        return Err(usage(format!(
            "--method {name} needs --base BASE (the model the --model fine-tunes start from)"
        )));
    };
    let settings = a.task_vectors.settings(&name, s.seed)?;
    let mut inputs = a.models.clone();
    inputs.push(base.clone());
    check_out(&a.out, &inputs, true)?;
    let tasks = tasks_option(&a.tasks)?;
    let io = a.io.inputs(s, p)?;
    let plan = TaskVectorPlan {
        base,
        models: a.models.clone(),
        settings,
        bn_reset_images: s.bn_reset_images.0,
        batch_size: s.batch_size,
        seed: s.seed,
        probe_dir: io.probe_dir,
        eval: (!a.no_eval).then_some(EvalPlan {
            root: io.test_root,
            tasks,
        }),
        cache_gib: io.cache_gib,
        device: io.device,
        backend: a.io.backend.backend.to_string(),
        command: command_line(),
    };
    run_and_save_task_vectors(&plan, &a.out, p)
}

/// Runs the task-vector merge `plan`, writes the model folder `out` and prints the report.
fn run_and_save_task_vectors(plan: &TaskVectorPlan, out: &Path, p: &mut Printer) -> Result<()> {
    let outcome = run_task_vectors(plan, p).map_err(merge_error)?;
    outcome
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    let r = &outcome.report;
    let text = r.table(&format!("{} -> {}", r.method, out.display()));
    let total = r.timings_seconds["total"];
    let note = format!("wrote {} ({total:.1}s)", out.display());
    p.emit(r, &text, Some(note))
}
