//! `zipmerge eval`: Joint / per-task / average accuracy of a model, multi-head model or ensemble.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use zipmerge::data::tasks::parse_tasks;
use zipmerge::eval::runner::evaluate;
use zipmerge::eval::Accuracy;
use zipmerge::system::System;

use zipmerge::progress::{phase, Observer};

use super::common::{data_error, data_root, load_split, positive, BackendArgs};
use super::printer::Printer;

/// Arguments of `zipmerge eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model folder(s); several = an ensemble (reference doc §5.3).
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Data root (its test/ folder is used) or a test folder; default $ZIPMERGE_DATA, else
    /// datasets/cifar10-sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Tasks, e.g. `0,1,2,3,4;5,6,7,8,9`; default: the classes of each head.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Batch size.
    #[arg(long, default_value_t = 500, value_parser = positive)]
    pub batch_size: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Default tasks: each head's classes, in model/head order, duplicates removed.
pub fn default_tasks(systems: &[System]) -> Vec<Vec<usize>> {
    let mut tasks: Vec<Vec<usize>> = Vec::new();
    for s in systems {
        for h in &s.heads {
            if !tasks.contains(&h.classes) {
                tasks.push(h.classes.clone());
            }
        }
    }
    tasks
}

/// Prints an accuracy table.
pub fn print_table(label: &str, a: &Accuracy) {
    println!("{label}");
    println!(
        "  FLOPs (MACs/image): {} ({:.3} G)",
        a.flops,
        a.flops as f64 / 1e9
    );
    println!("  Joint:    {:6.2}%  ({} images)", a.joint, a.images);
    for (i, t) in a.tasks.iter().enumerate() {
        let name = if a.tasks.len() <= 26 {
            ((b'A' + i as u8) as char).to_string()
        } else {
            i.to_string()
        };
        println!(
            "  Task {name}:   {:6.2}%  classes {:?}",
            t.accuracy, t.classes
        );
    }
    println!("  Avg:      {:6.2}%", a.avg);
}

/// Runs `zipmerge eval`.
pub fn exec(a: EvalArgs, p: &mut Printer) -> Result<()> {
    let tasks = match &a.tasks {
        Some(t) => Some(parse_tasks(t, zipmerge::checkpoint::MAX_LABELS).map_err(data_error)?),
        None => None,
    };
    let device = a.backend.device(p)?;
    let systems: Vec<System> = a
        .models
        .iter()
        .map(|m| System::load(m, &device).with_context(|| format!("loading model {}", m.display())))
        .collect::<Result<_>>()?;
    let arch0 = (systems[0].manifest.arch, systems[0].manifest.width);
    for (s, m) in systems.iter().zip(&a.models) {
        if (s.manifest.arch, s.manifest.width) != arch0 {
            p.info(&format!(
                "note: {} is {} x{}, the first model is {} x{}",
                m.display(),
                s.manifest.arch,
                s.manifest.width,
                arch0.0,
                arch0.1
            ));
        }
    }
    let root = data_root(a.data.as_deref());
    let test = load_split(&root, "test", systems[0].config().preprocess(), p)?;
    let tasks = tasks.unwrap_or_else(|| default_tasks(&systems));
    let n = zipmerge::eval::runner::check_evaluation(
        &zipmerge::eval::runner::heads_of(&systems),
        &test,
        &tasks,
    )?;
    let t0 = std::time::Instant::now();
    let acc = phase(p, "eval", n as u64, |pr| {
        evaluate(&systems, &test, &tasks, a.batch_size, &device, pr)
    });
    let secs = t0.elapsed().as_secs_f64();
    if p.json() {
        let mut v = serde_json::to_value(&acc)?;
        v["seconds"] = serde_json::json!(secs);
        v["images_per_second"] = serde_json::json!(acc.images as f64 / secs);
        println!("{}", serde_json::to_string(&v)?);
    } else {
        let label = if systems.len() > 1 {
            format!("Ensemble of {} models", systems.len())
        } else {
            a.models[0].display().to_string()
        };
        print_table(&label, &acc);
        eprintln!("  {:.1}s, {:.0} images/s", secs, acc.images as f64 / secs);
    }
    Ok(())
}
