//! `zipmerge merge`: statistics -> matching -> rewriting -> BN reset -> (eval) -> model folder
//! + `report.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use zipmerge::collect::{probe_batches_sparse, probe_indices, ProbeOptions};
use zipmerge::data::tasks::parse_tasks;
use zipmerge::data::{Preprocess, SparseSet};
use zipmerge::eval::runner::evaluate;
use zipmerge::merge::{self, Endpoints, Method};

use super::common::{
    bar, check_out_not_input, command_line, data_root, finite, load_split, max_cached_images,
    merge_error, non_negative, positive, usage, warn_dead_units, BackendArgs, UsageExt,
};
use super::eval_cmd::print_table;

/// Options shared by merge, sweep and reproduce: method, probe and BN-reset sets.
#[derive(Args, Debug, Clone)]
pub struct MergeSettings {
    /// Matching method: zipit, permute, weight-avg, git-rebasin, cca (CCA Merge), return-a.
    #[arg(long, default_value = "zipit")]
    pub method: String,
    /// ZipIt! alpha (> 0): similarity of a merged feature is alpha * min of its parts'.
    #[arg(long, default_value_t = 0.3, value_parser = finite)]
    pub alpha: f64,
    /// ZipIt! beta in [0, 1]: budget of same-model merges per model, floor(Om/2) * beta.
    #[arg(long, default_value_t = 0.125, value_parser = finite)]
    pub beta: f64,
    /// CCA Merge's ridge, relative to the mean variance of each feature space (>= 0).
    #[arg(long, default_value_t = zipmerge::matching::cca::DEFAULT_CCA_REG, value_parser = non_negative)]
    pub cca_reg: f64,
    /// Merge normalisation epsilon: merge = P / (colsum(P) + eps).
    #[arg(long, default_value_t = 1e-5, value_parser = non_negative)]
    pub merge_eps: f64,
    /// Probe folder (ImageFolder of both tasks' classes; labels unused); default: the train/
    /// folder of --data.
    #[arg(long)]
    pub probe: Option<PathBuf>,
    /// Probe images (`all` = every image).
    #[arg(long, default_value = "1000")]
    pub probe_images: String,
    /// Use the probe images without training augmentation (the reference augments).
    #[arg(long)]
    pub no_probe_augment: bool,
    /// Images for the BN reset (`0` = no reset; `all` = every probe-folder image).
    #[arg(long, default_value = "1000")]
    pub bn_reset_images: String,
    /// Skip the BN reset of the endpoints before merging (the reference resets them).
    #[arg(long)]
    pub no_endpoint_bn_reset: bool,
    /// Skip the BN reset after a Git Re-Basin merge, as one reference script does (its JAX
    /// models use LayerNorm; reference doc §3.5). By default every method's merge is reset, as
    /// the paper states.
    #[arg(long)]
    pub no_rebasin_bn_reset: bool,
    /// Feature similarity of zipit and permute: `activation` (correlation), `weight` (cosine
    /// of the producing filters) or `dual` (MuDSC: (1 - L) * activation + L * weight).
    #[arg(long, default_value = "activation", value_parser = ["activation", "weight", "dual"])]
    pub similarity: String,
    /// L of `--similarity dual`, in [0, 1].
    #[arg(long, default_value_t = 0.5, value_parser = finite)]
    pub dual_lambda: f64,
    /// REPAIR after the merge (Jordan et al., ICLR 2023): reset each merged channel's mean and
    /// std on the probe images to the average of its source channels' (any method; in a partial
    /// zip, the merged trunk).
    #[arg(long)]
    pub repair: bool,
    /// Closed-form refit after the merge: `lstsq` refits every merged conv/linear by ridge
    /// least squares to its merge-matrix target from the merged network's own inputs on the
    /// probe images; `none` skips it.
    #[arg(long, default_value = "none", value_parser = ["none", "lstsq"])]
    pub refit: String,
    /// Relative ridge of `--refit lstsq` (>= 0; times the mean diagonal of the normal equations).
    #[arg(long, default_value_t = zipmerge::correct::refit::DEFAULT_REFIT_RIDGE, value_parser = non_negative)]
    pub refit_ridge: f64,
    /// Batch size of statistics, BN reset and evaluation.
    #[arg(long, default_value_t = 500, value_parser = positive)]
    pub batch_size: usize,
    /// Seed of probe/BN-reset subsets, augmentation and Git Re-Basin's visiting order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl MergeSettings {
    /// Parsed method.
    pub fn method(&self) -> Result<Method> {
        Method::parse(&self.method, self.alpha, self.beta, self.seed)
            .and_then(|m| m.with_cca_reg(self.cca_reg))
            .map_err(merge_error)
    }

    /// The dual-space lambda of `--similarity` (0 for activation, 1 for weight), checked
    /// against `method`.
    pub fn dual_lambda(&self, method: &Method) -> Result<f64> {
        merge::check_dual_lambda(self.dual_lambda).map_err(merge_error)?;
        let l = match self.similarity.as_str() {
            "weight" => 1.0,
            "dual" => self.dual_lambda,
            _ => 0.0,
        };
        merge::check_dual(method, l).map_err(merge_error)?;
        Ok(l)
    }

    /// The post-merge corrections asked for.
    pub fn corrections(&self) -> zipmerge::correct::Corrections {
        zipmerge::correct::Corrections {
            repair: self.repair,
            refit_ridge: (self.refit == "lstsq").then_some(self.refit_ridge),
        }
    }

    /// `--probe-images` as a count.
    pub fn probe_count(&self) -> Result<Option<usize>> {
        count(&self.probe_images, "--probe-images")
    }

    /// `--bn-reset-images` as a count.
    pub fn bn_count(&self) -> Result<Option<usize>> {
        count(&self.bn_reset_images, "--bn-reset-images")
    }

    /// The probe draw's options (statistics).
    fn probe_options(&self) -> Result<ProbeOptions> {
        Ok(ProbeOptions {
            images: self.probe_count()?,
            batch_size: self.batch_size,
            augment: !self.no_probe_augment,
            seed: self.seed,
        })
    }

    /// The BN-reset draw's options (augmented, seeded with seed + 1).
    fn bn_options(&self) -> Result<ProbeOptions> {
        Ok(ProbeOptions {
            images: self.bn_count()?,
            batch_size: self.batch_size,
            augment: true,
            seed: self.seed.wrapping_add(1),
        })
    }

    /// Loads the probe folder (`--probe`, else the train split of the data root `root`),
    /// decoding only the images the probe and BN-reset draws use.
    pub fn load_probe(&self, root: &Path, prep: Preprocess, quiet: bool) -> Result<SparseSet> {
        let t0 = Instant::now();
        let dir = match &self.probe {
            Some(p) => p.clone(),
            None => zipmerge::data::split_dir(root, "train"),
        };
        let dir = dir.as_path();
        let (p, b) = (self.probe_options()?, self.bn_options()?);
        let reset = self.bn_count()? != Some(0);
        let set = SparseSet::load(
            dir,
            "train",
            prep,
            max_cached_images(prep, "train")?,
            &|n| {
                let mut v = probe_indices(n, &p);
                if reset {
                    v.extend(probe_indices(n, &b));
                }
                v
            },
        )
        .with_context(|| format!("loading probe images {}", dir.display()))?;
        if !quiet {
            eprintln!(
                "decoded {} of {} probe-folder images from {} in {:.1}s",
                set.set.len(),
                set.total,
                dir.display(),
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(set)
    }

    /// Probe batches (statistics) from the probe set.
    pub fn probe_batches(&self, probe: &SparseSet) -> Result<Vec<Vec<Vec<u8>>>> {
        let n = self.probe_count()?;
        if n == Some(0) {
            return Err(usage(
                "--probe-images 0: the statistics need at least one image",
            ));
        }
        if probe.total == 0 {
            bail!("the probe set {} is empty", probe.set.source);
        }
        let used = n.unwrap_or(probe.total).min(probe.total);
        if used < self.batch_size {
            eprintln!(
                "note: the probe set gives {used} images ({} in {}), fewer than --batch-size {}: using one batch of {used}",
                probe.total, probe.set.source, self.batch_size
            );
        }
        Ok(probe_batches_sparse(
            &probe.set,
            probe.total,
            &probe.positions,
            &self.probe_options()?,
        )?)
    }

    /// BN-reset batches (augmented, seeded with seed + 1).
    pub fn bn_batches(&self, probe: &SparseSet) -> Result<Vec<Vec<Vec<u8>>>> {
        if self.bn_count()? == Some(0) {
            return Ok(vec![]);
        }
        Ok(probe_batches_sparse(
            &probe.set,
            probe.total,
            &probe.positions,
            &self.bn_options()?,
        )?)
    }
}

fn count(s: &str, opt: &str) -> Result<Option<usize>> {
    if s == "all" {
        return Ok(None);
    }
    s.parse::<usize>()
        .map(Some)
        .map_err(|_| usage(format!("{opt} `{s}`: expected a number or `all`")))
}

/// Arguments of `zipmerge merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Source model folders (N >= 2).
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Stop point: `7/20` (layer1), `13/20` (layer2), `19/20` (layer3), `20/20` (full) for
    /// ResNet-20; `k/9` for VGG-11.
    #[arg(long, default_value = "full")]
    pub stop: String,
    #[command(flatten)]
    pub settings: MergeSettings,
    /// Data root with train/ (probe and BN-reset images) and test/ (evaluation).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate on this data root's test/ folder (default: --data's) after merging.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Tasks for evaluation (`0,1,2;3,4`), or `auto` (each source model's classes).
    #[arg(long, default_value = "auto")]
    pub tasks: String,
    /// Skip evaluation.
    #[arg(long)]
    pub no_eval: bool,
    /// Output model folder (gets the weights, manifest.json and report.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the report as JSON only.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge merge`.
pub fn exec(a: MergeArgs) -> Result<()> {
    let quiet = a.quiet || a.json;
    let s = &a.settings;
    let method = s.method()?;
    s.probe_count()?;
    s.bn_count()?;
    check_out_not_input(&a.out, &a.models)?;
    zipmerge::checkpoint::check_out_dir(&a.out)?;
    let mut ep = Endpoints::load(&a.models).map_err(merge_error)?;
    let stop = ep.spec.stop(&a.stop).map_err(merge_error)?;
    merge::check_method(&ep, &method, s.merge_eps).map_err(merge_error)?;
    let tasks = if a.tasks == "auto" {
        None
    } else {
        Some(parse_tasks(&a.tasks, zipmerge::checkpoint::MAX_LABELS).usage()?)
    };
    let device = a.backend.device(quiet)?;
    let root = data_root(a.data.as_deref());
    let prep = ep.spec.net.preprocess();
    let t_load = Instant::now();
    let probe = s.load_probe(&root, prep, quiet)?;
    let probe_load_s = t_load.elapsed().as_secs_f64();
    // validate everything before the long steps
    let corrections = s.corrections();
    corrections.check().map_err(merge_error)?;
    let lambda = s.dual_lambda(&method)?;
    let probe_b = if method.needs_statistics() || corrections.any() {
        s.probe_batches(&probe)?
    } else {
        vec![]
    };
    let bn_b = s.bn_batches(&probe)?;
    let reset_merged = !bn_b.is_empty()
        && (!s.no_rebasin_bn_reset || !matches!(method, Method::GitRebasin { .. }));
    let tasks = tasks.unwrap_or_else(|| ep.tasks());
    // the test set is loaded and checked before the long steps, so data that `eval` refuses is
    // refused here too, before any statistics
    let test = if a.no_eval {
        None
    } else {
        let test_root = a.eval_data.clone().unwrap_or(root.clone());
        let test = load_split(&test_root, "test", prep, quiet)?;
        let n = zipmerge::eval::runner::check_evaluation(&ep.heads(), &test, &tasks)?;
        Some((test, n))
    };
    let t_all = Instant::now();
    let mut timings = serde_json::Map::new();
    if !a.settings.no_endpoint_bn_reset && !bn_b.is_empty() {
        let t = Instant::now();
        let pb = bar(
            (bn_b.iter().map(Vec::len).sum::<usize>() * ep.n()) as u64,
            "endpoint BN",
            quiet,
        );
        ep.reset_bn(&bn_b, &device, &mut |k| pb.inc(k as u64))?;
        pb.finish_and_clear();
        timings.insert("endpoint_bn_reset".into(), json!(t.elapsed().as_secs_f64()));
    }
    let mut dead_units = Vec::new();
    let stats = if method.needs_statistics() {
        let t = Instant::now();
        let pb = bar(
            probe_b.iter().map(Vec::len).sum::<usize>() as u64,
            "statistics",
            quiet,
        );
        let st = merge::statistics_upto(&ep, &probe_b, &device, stop.spaces, &mut |k| {
            pb.inc(k as u64)
        })?;
        pb.finish_and_clear();
        timings.insert("statistics".into(), json!(t.elapsed().as_secs_f64()));
        dead_units = warn_dead_units(&st, &ep.spec.spaces);
        Some(st)
    } else {
        None
    };
    let t = Instant::now();
    let transforms = merge::match_spaces_with(
        &ep,
        &method,
        stats.as_ref(),
        stop.spaces,
        s.merge_eps,
        lambda,
    )?;
    timings.insert("matching".into(), json!(t.elapsed().as_secs_f64()));
    let provenance = json!({
        "merge": {
            "method": method,
            "alpha": s.alpha, "beta": s.beta, "merge_eps": s.merge_eps,
            "stop": stop.name, "zipped_layers": stop.zipped, "total_layers": stop.total,
            "sources": a.models.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "probe": probe.set.source, "probe_images": stats.as_ref().map(|s| s.images),
            "probe_augment": !s.no_probe_augment, "dead_units": dead_units,
            "bn_reset_images": bn_b.iter().map(Vec::len).sum::<usize>(),
            "merged_bn_reset": reset_merged,
            "endpoint_bn_reset": !s.no_endpoint_bn_reset,
            "corrections": corrections,
            "similarity": s.similarity, "dual_lambda": lambda,
            "seed": s.seed, "backend": a.backend.backend.to_string(),
            "command": command_line(),
        }
    });
    let t = Instant::now();
    let mut merged = merge::build(&ep, &transforms, &stop, provenance.clone())?;
    timings.insert("rewriting".into(), json!(t.elapsed().as_secs_f64()));
    if reset_merged {
        let t = Instant::now();
        let pb = bar(
            bn_b.iter().map(Vec::len).sum::<usize>() as u64,
            "BN reset",
            quiet,
        );
        merged.reset_bn(&bn_b, &device, &mut |k| pb.inc(k as u64))?;
        pb.finish_and_clear();
        timings.insert("bn_reset".into(), json!(t.elapsed().as_secs_f64()));
    }
    let correction = if corrections.any() {
        let t = Instant::now();
        if !quiet {
            eprintln!(
                "correcting the merged trunk ({})",
                corrections.label().trim_start_matches(" + ")
            );
        }
        let r =
            zipmerge::correct::apply(&mut merged, &ep, &transforms, &stop, &probe_b, &corrections)
                .map_err(merge_error)?;
        timings.insert("corrections".into(), json!(t.elapsed().as_secs_f64()));
        Some(r)
    } else {
        None
    };
    let sys = merged.system(&device)?;
    let flops = sys.flops();
    let accuracy = if let Some((test, n)) = &test {
        let (test, n) = (test, *n);
        let t = Instant::now();
        let pb = bar(n as u64, "eval", quiet);
        let acc = evaluate(&[sys], test, &tasks, s.batch_size, &device, &mut |k| {
            pb.inc(k as u64)
        });
        pb.finish_and_clear();
        timings.insert("eval".into(), json!(t.elapsed().as_secs_f64()));
        Some(acc)
    } else {
        None
    };
    timings.insert("total".into(), json!(t_all.elapsed().as_secs_f64()));
    timings.insert("loading_probe".into(), json!(probe_load_s));
    let report = json!({
        "method": method.label(),
        "settings": provenance["merge"],
        "stop": stop.name,
        "zipped_layers": stop.zipped,
        "total_layers": stop.total,
        "flops": flops,
        "accuracy": accuracy,
        "timings_seconds": timings,
        "statistics_passes": stats.as_ref().map_or(0, |s| s.passes),
        "correction": correction,
        "peak_rss_mb": zipmerge::util::peak_rss_mb(),
    });
    let report_bytes = serde_json::to_vec_pretty(&report)?;
    merged
        .save_with(&a.out, &[("report.json".into(), report_bytes)])
        .with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if let Some(acc) = &accuracy {
            print_table(
                &format!(
                    "{}{} {} -> {}",
                    method.label(),
                    corrections.label(),
                    stop.name,
                    a.out.display()
                ),
                acc,
            );
        }
        eprintln!(
            "wrote {} ({:.1}s)",
            a.out.display(),
            t_all.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
