//! `zipmerge reproduce grid`: the paper's alpha/beta search for ZipIt! (and the task-vector
//! methods' density/lambda grid) over one endpoint group ([`grid`]), each cell a merge.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

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
    /// Evaluate each cell on a seeded subset of this many test images (`None`: all).
    pub eval_images: Option<usize>,
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

/// The best cell by joint accuracy.
#[derive(Clone, Debug, Serialize)]
pub struct GridBest {
    /// Alpha.
    pub alpha: f64,
    /// Beta.
    pub beta: f64,
    /// Joint accuracy, %.
    pub joint: f64,
}

/// What [`grid`] measured (`grid.json`).
#[derive(Clone, Debug, Serialize)]
pub struct GridReport {
    /// Stop name.
    pub stop: String,
    /// Best cell.
    pub best: GridBest,
    /// Every cell, alpha-major.
    pub cells: Vec<GridCell>,
    /// Statistics passes and matching runs.
    pub counters: Counters,
    /// Test images per cell.
    pub test_images: usize,
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
/// doc §5.2).
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
    let ep = load_endpoints(&plan.models, &methods, s.merge_eps)?;
    let stop = ep.spec.stop(&plan.stop)?;
    let (train, mut test) = load_data(&plan.inputs, &s, &ep, obs)?;
    if let Some(n) = plan.eval_images {
        test = test.seeded_subset(n, s.seed);
    }
    let t0 = Instant::now();
    let mut counters = Counters::default();
    let tasks = tasks_checked(&ep, &test)?;
    let device = &plan.inputs.device;
    let p = prepare(ep, tasks, &s, &train, device, obs, &mut counters)?;
    let exp = p.context(&test, &s, device);
    let lambda = s.similarity.lambda();
    let mut cells = Vec::new();
    obs.begin("grid", methods.len() as u64);
    for method in &methods {
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
        cells.push(GridCell {
            alpha,
            beta,
            accuracy: r.accuracy,
        });
        obs.advance(1);
    }
    obs.end();
    let best = cells
        .iter()
        .max_by(|x, y| x.accuracy.joint.total_cmp(&y.accuracy.joint))
        .map(|c| GridBest {
            alpha: c.alpha,
            beta: c.beta,
            joint: c.accuracy.joint,
        })
        .expect("at least one cell");
    Ok(GridReport {
        stop: stop.name,
        best,
        cells,
        counters,
        test_images: test.len(),
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
    crate::experiments::plot::grid_heatmap(&cells, alphas, betas, &out.join("grid.png"))
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
                },
                TaskAccuracy {
                    classes: vec![1],
                    accuracy: b,
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
            },
            cells,
            counters: Counters::default(),
            test_images: 10,
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
