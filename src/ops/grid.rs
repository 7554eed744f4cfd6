//! `zipmerge reproduce grid`: the paper's alpha/beta search for ZipIt! (and the task-vector
//! methods' density/lambda grid) over one endpoint group ([`grid`]), each cell a merge.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::collect::probe::{load_probe, load_validation};
use crate::error::{ExperimentError, MergeError, MergeParam};
use crate::experiments::prepare::*;
use crate::experiments::Counters;
use crate::merge::{self, MergeSettings, Method};
use crate::progress::Observer;

/// The alpha/beta grid search at one stop ([`grid`]).
#[derive(Clone, Debug)]
pub struct GridPlan {
    /// Source models.
    pub models: Vec<PathBuf>,
    /// Stop of the zip.
    pub stop: String,
    /// Alpha values.
    pub alphas: Vec<f64>,
    /// Beta values.
    pub betas: Vec<f64>,
    /// Validation images each cell is scored on: a seeded draw (seed `settings.seed + 2`) from
    /// the probe folder's images that neither the probe nor the BN-reset draw uses.
    pub val_images: usize,
    /// Evaluate the chosen cell, once, on a seeded subset of this many test images (`None`:
    /// all).
    pub eval_images: Option<usize>,
    /// Evaluate the chosen cell on the test set at all (`false`: the test folder is not read).
    pub test: bool,
    /// Draws, corrections (the method is ZipIt! with each cell's alpha and beta).
    pub settings: MergeSettings,
    /// Data and device.
    pub inputs: Inputs,
}

/// One cell of the grid.
#[derive(Clone, Debug, Serialize)]
pub struct GridCell {
    /// Alpha.
    pub alpha: f64,
    /// Beta.
    pub beta: f64,
    /// Accuracy.
    pub accuracy: crate::eval::Accuracy,
}

/// The cell chosen by validation joint accuracy, with its test accuracy.
#[derive(Clone, Debug, Serialize)]
pub struct GridBest {
    /// Alpha.
    pub alpha: f64,
    /// Beta.
    pub beta: f64,
    /// Joint accuracy on the validation images, %.
    pub joint: f64,
    /// Its accuracy on the test set, measured once after the choice (`None`: not evaluated).
    pub test: Option<crate::eval::Accuracy>,
}

/// What [`grid`] measured (`grid.json`).
#[derive(Clone, Debug, Serialize)]
pub struct GridReport {
    /// Stop name.
    pub stop: String,
    /// Best cell.
    pub best: GridBest,
    /// Every cell, alpha-major, scored on the validation images.
    pub cells: Vec<GridCell>,
    /// Statistics passes and matching runs.
    pub counters: Counters,
    /// Validation images each cell was scored on.
    pub val_images: usize,
    /// Seed of the validation draw.
    pub val_seed: u64,
    /// Test images the chosen cell was evaluated on (0: not evaluated).
    pub test_images: usize,
    /// How this was made: version, commit, command, date, machine, data, every setting.
    pub provenance: crate::provenance::Provenance,
    /// Seconds.
    pub seconds: f64,
}

impl GridReport {
    /// The grid as CSV (`alpha,beta,joint,task_a,task_b,avg`).
    pub fn csv(&self) -> String {
        let mut c = String::from("alpha,beta,joint,task_a,task_b,avg\n");
        for g in &self.cells {
            let t = |i: usize| g.accuracy.tasks.get(i).map_or(0.0, |x| x.accuracy);
            c.push_str(&format!(
                "{},{},{:.4},{:.4},{:.4},{:.4}\n",
                g.alpha,
                g.beta,
                g.accuracy.joint,
                t(0),
                t(1),
                g.accuracy.avg
            ));
        }
        c
    }
}

/// Zips at one stop for every (alpha, beta) of the grid from one statistics pass (reference
/// doc §5.2), scores every cell on a validation split of the train folder (the paper holds out
/// a split for the search), chooses the cell of the best validation joint accuracy and only
/// then evaluates it, once, on the test set.
///
/// # Errors
/// [`MergeError`]: [`MergeError::Param`] for a bad alpha or beta.
pub fn grid(plan: &GridPlan, obs: &mut dyn Observer) -> Result<GridReport, MergeError> {
    let s = &plan.settings;
    let methods = plan
        .alphas
        .iter()
        .flat_map(|&al| plan.betas.iter().map(move |&be| (al, be)))
        .map(|(al, be)| Method::parse("zipit", al, be, s.seed))
        .collect::<Result<Vec<_>, _>>()?;
    if methods.is_empty() {
        let p = if plan.alphas.is_empty() {
            MergeParam::Alpha
        } else {
            MergeParam::Beta
        };
        return Err(MergeError::param(
            p,
            "",
            "the grid needs at least one value",
        ));
    }
    let s = MergeSettings {
        method: methods[0].clone(),
        ..s.clone()
    };
    s.check()?;
    let ep = merge::Endpoints::load(&plan.models)?;
    let stop = ep.spec.stop(&plan.stop)?;
    let prep = ep.prep();
    let inputs = &plan.inputs;
    let draws = s.draws();
    let train = load_probe(&inputs.probe_dir, prep, inputs.cache_gib, &draws, obs)?;
    // the cells are scored on a validation split of the train folder; the test folder is read
    // once, after the choice
    let val_seed = s.seed.wrapping_add(2);
    let val = load_validation(
        &inputs.probe_dir,
        prep,
        inputs.cache_gib,
        &draws,
        plan.val_images,
        val_seed,
    )?;
    let t0 = Instant::now();
    let mut counters = Counters::default();
    let tasks = tasks_checked(&ep, &val.set)?;
    let device = &inputs.device;
    let p = prepare(ep, tasks, &s, &train, device, obs, &mut counters)?;
    let lambda = s.similarity.lambda();
    let mut cells: Vec<GridCell> = Vec::new();
    let mut best: Option<(usize, Vec<crate::matching::MergeUnmerge>)> = None;
    {
        let exp = p.context(&val.set, &s, device);
        obs.begin("grid (validation)", methods.len() as u64);
        for (i, method) in methods.iter().enumerate() {
            let Method::Zipit { alpha, beta } = *method else {
                unreachable!("grid methods are ZipIt!")
            };
            let t = merge::match_spaces_with(
                &p.ep,
                method,
                Some(&p.stats),
                stop.spaces,
                s.merge_eps,
                lambda,
            )?;
            counters.matching_runs += 1;
            let label = format!("a={alpha} b={beta}");
            let r = exp.corrected_row(&label, &t, &stop, true, &s.corrections, &mut |_| {})?;
            let better = best
                .as_ref()
                .is_none_or(|(b, _)| r.accuracy.joint > cells[*b].accuracy.joint);
            cells.push(GridCell {
                alpha,
                beta,
                accuracy: r.accuracy,
            });
            if better {
                best = Some((i, t));
            }
            obs.advance(1);
        }
        obs.end();
    }
    let (bi, transforms) = best.expect("at least one cell");
    let (test, test_images) = if plan.test {
        let mut test =
            crate::data::load_split(&inputs.test_root, "test", prep, inputs.cache_gib, None, obs)?;
        if let Some(n) = plan.eval_images {
            test = test.seeded_subset(n, s.seed);
        }
        tasks_checked(&p.ep, &test)?;
        let exp = p.context(&test, &s, device);
        let label = format!("a={} b={}", cells[bi].alpha, cells[bi].beta);
        let r = row(obs, &p, &test, "chosen cell on test", |pr| {
            exp.corrected_row(&label, &transforms, &stop, true, &s.corrections, pr)
        })?;
        (Some(r.accuracy), test.len())
    } else {
        (None, 0)
    };
    let best = GridBest {
        alpha: cells[bi].alpha,
        beta: cells[bi].beta,
        joint: cells[bi].accuracy.joint,
        test,
    };
    let mut provenance = inputs.provenance(
        train.total,
        test_images,
        &serde_json::json!({
            "models": plan.models,
            "stop": stop.name,
            "alphas": plan.alphas,
            "betas": plan.betas,
            "val_images": plan.val_images,
            "val_seed": val_seed,
            "eval_images": plan.eval_images,
            "settings": s,
        }),
    );
    provenance.data.insert(
        1,
        crate::provenance::DataFolder {
            role: "validation",
            path: inputs.probe_dir.display().to_string(),
            images: val.set.len(),
        },
    );
    Ok(GridReport {
        provenance,
        stop: stop.name,
        best,
        cells,
        counters,
        val_images: val.set.len(),
        val_seed,
        test_images,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Writes `grid.png` (heat map of joint accuracy), `grid.csv` and `grid.json` into `out`.
///
/// # Errors
/// [`ExperimentError`] naming the file.
pub fn write_grid(
    out: &Path,
    report: &GridReport,
    alphas: &[f64],
    betas: &[f64],
) -> Result<(), ExperimentError> {
    let cells: Vec<(f64, f64, f64)> = report
        .cells
        .iter()
        .map(|c| (c.alpha, c.beta, c.accuracy.joint))
        .collect();
    let title = format!(
        "ZipIt!{}: joint accuracy (%) on {} validation images; chosen cell outlined",
        report.stop, report.val_images
    );
    crate::experiments::plot::grid_heatmap(
        &cells,
        alphas,
        betas,
        Some((report.best.alpha, report.best.beta)),
        &title,
        &out.join("grid.png"),
    )
    .map_err(|e| ExperimentError::plot("the heat map", e))?;
    write(&out.join("grid.csv"), report.csv().as_bytes())?;
    write(&out.join("grid.json"), &json_bytes(report)?)
}

/// The operation: [`grid`], then its files written to `out` when given ([`write_grid`]).
///
/// # Errors
/// [`ExperimentError::Merge`] from the runs; [`ExperimentError`] naming an output file.
pub fn run(
    plan: &GridPlan,
    out: Option<&std::path::Path>,
    obs: &mut dyn Observer,
) -> Result<GridReport, ExperimentError> {
    let r = grid(plan, obs)?;
    if let Some(out) = out {
        write_grid(out, &r, &plan.alphas, &plan.betas)?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Accuracy, TaskAccuracy};

    /// The CSV has one row per cell in the grid's order, with the tasks' accuracies.
    #[test]
    fn grid_csv_lists_every_cell() {
        let acc = |joint: f64, a: f64, b: f64| Accuracy {
            joint,
            tasks: vec![
                TaskAccuracy {
                    classes: vec![0],
                    accuracy: a,
                    loss: 0.0,
                },
                TaskAccuracy {
                    classes: vec![1],
                    accuracy: b,
                    loss: 0.0,
                },
            ],
            avg: (a + b) / 2.0,
            flops: 0,
            images: 10,
        };
        let cells = vec![
            GridCell {
                alpha: 0.3,
                beta: 0.5,
                accuracy: acc(50.0, 60.0, 70.0),
            },
            GridCell {
                alpha: 1.0,
                beta: 0.125,
                accuracy: acc(40.0, 45.5, 55.0),
            },
        ];
        let r = GridReport {
            stop: "full".into(),
            best: GridBest {
                alpha: 0.3,
                beta: 0.5,
                joint: 50.0,
                test: None,
            },
            cells,
            counters: Counters::default(),
            val_images: 10,
            val_seed: 2,
            test_images: 0,
            provenance: crate::provenance::Provenance::new("zipmerge", "flex", vec![], &()),
            seconds: 0.0,
        };
        assert_eq!(
            r.csv(),
            "alpha,beta,joint,task_a,task_b,avg\n\
             0.3,0.5,50.0000,60.0000,70.0000,65.0000\n\
             1,0.125,40.0000,45.5000,55.0000,50.2500\n"
        );
    }
}
