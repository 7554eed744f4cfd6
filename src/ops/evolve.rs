//! `zipmerge evolve`: a CMA-ES search over merge recipes (Akiba et al., Evolutionary
//! Optimization of Model Merging Recipes, 2024) in parameter space, data-flow space or both
//! ([`crate::search::genome`]), scored on a validation split carved from the train folder.
//!
//! Protocol: the validation images are a seeded draw (seed `--seed + 2`) from the train-folder
//! images that neither the statistics' probe draw nor the BN-reset draw uses; the endpoints'
//! BN reset and the feature statistics run once (per stop) and every candidate reuses them;
//! **the test folder is not opened until the search has ended**, and then once, for the best
//! recipe, the default recipe and the grid's best (all chosen on validation). A candidate is
//! built by the same steps as `zipmerge merge` (`ops::merge::combine`), so `best.json`
//! replays to the bits the search scored.
//!
//! Files under `--out`: `state.json` (the CMA-ES state and the trace, written after every
//! generation; `--resume` continues from it with the same bits), `trace.csv`, and at the end
//! `best.json` (a recipe for `zipmerge merge --recipe`), `model/` (the best merge with its
//! `report.json`), `fitness.png` and `evolve.json` (this report).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::merge::{combine, Combined};
use super::task_vectors::{combine_task_vectors, load_inputs, TaskVectorInputs};
use crate::collect::probe::{bn_batches, load_probe, load_validation, probe_batches, Draws};
use crate::collect::ProbeOptions;
use crate::error::{ExperimentError, MergeError, MergeParam};
use crate::eval::runner::{check_evaluation, evaluate_on, EvalSet};
use crate::eval::Accuracy;
use crate::experiments::prepare::{json_bytes, write};
use crate::merge::{
    statistics_upto, Batches, Combine, Endpoints, EvalPlan, MergeSettings, Method, Recipe,
    RecipePlan, Statistics, TaskVectorPlan,
};
use crate::progress::{phase, Observer};
use crate::rewrite::path::Source;
use crate::search::cmaes::{default_population, Cmaes};
use crate::search::genome::{Candidate, Gene, Genome, SearchSpace};
use crate::system::runner::Runner;
use crate::taskvec::TaskVectorSettings;

/// What a search maximises on the validation split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fitness {
    /// Joint accuracy (reference doc §5.1).
    Joint,
    /// The mean of the per-task accuracies.
    Avg,
}

impl Fitness {
    /// The fitness of an accuracy, percent.
    pub fn of(self, a: &Accuracy) -> f64 {
        match self {
            Fitness::Joint => a.joint,
            Fitness::Avg => a.avg,
        }
    }
}

/// One search.
#[derive(Clone, Debug)]
pub struct EvolvePlan {
    /// Source models (N >= 2).
    pub models: Vec<PathBuf>,
    /// The stop (when it is not a gene).
    pub stop: String,
    /// Stops the stop gene chooses from (two or more; empty: the stop is fixed).
    pub search_stops: Vec<String>,
    /// Whether REPAIR on/off is a gene.
    pub search_repair: bool,
    /// Settings every candidate starts from (method, draws, batch size; `seed` is the search's;
    /// a task-vector search takes its BN-reset images, batch size and seed from here).
    pub settings: MergeSettings,
    /// A search of task-vector merges of fine-tunes (`None`: an aligning merge's).
    pub task_vectors: Option<TaskVectorSearch>,
    /// Parameter space, data-flow space or both.
    pub space: SearchSpace,
    /// Where a data-flow path's stem and head come from.
    pub ends: Source,
    /// Evaluations of the search (the reference points not counted).
    pub budget: usize,
    /// CMA-ES population (`None`: `4 + floor(3 ln n)`).
    pub population: Option<usize>,
    /// Initial step size, in units of each gene's range (the paper's 1/6).
    pub sigma: f64,
    /// Validation images (drawn from the train folder, disjoint from the probe and BN draws).
    pub val_images: usize,
    /// What is maximised.
    pub fitness: Fitness,
    /// The alpha/beta grid whose best cell (on validation) is a reference (ZipIt! only).
    pub grid: Option<(Vec<f64>, Vec<f64>)>,
    /// Probe folder (the train folder: probe, BN-reset and validation images).
    pub probe_dir: PathBuf,
    /// The test evaluation at the end (`None`: no test image is read).
    pub eval: Option<EvalPlan>,
    /// Pixel cache, GiB.
    pub cache_gib: f64,
    /// Device.
    pub device: Runner,
    /// Backend name.
    pub backend: String,
    /// Command line.
    pub command: String,
    /// Output folder.
    pub out: PathBuf,
    /// Continue the search saved in `out/state.json` (same options; a larger budget extends
    /// it, and a search stopped mid-generation continues with the bits of an uninterrupted one).
    pub resume: bool,
}

/// The task-vector family of a search: the base the fine-tunes (`models`) start from and the
/// method's settings every candidate starts from.
#[derive(Clone, Debug)]
pub struct TaskVectorSearch {
    /// Base model folder.
    pub base: PathBuf,
    /// Method, lambda, weights, DARE's seed.
    pub settings: TaskVectorSettings,
}

/// One evaluation of the search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    /// Generation (0-based).
    pub generation: u64,
    /// Evaluation (1-based, counting the search's only).
    pub evaluation: u64,
    /// Fitness on validation, percent.
    pub fitness: f64,
    /// Joint accuracy on validation, percent.
    pub joint: f64,
    /// Average task accuracy on validation, percent.
    pub avg: f64,
    /// Stop of the candidate.
    pub stop: String,
    /// The decoded gene values (genes in `evolve.json`'s order).
    pub genes: Vec<f64>,
    /// The search coordinates.
    pub x: Vec<f64>,
}

/// A reference point scored on validation (and on test at the end).
#[derive(Clone, Debug, Serialize)]
pub struct Reference {
    /// What it is (`default`, `grid best (alpha 1, beta 1)`, `evolved`).
    pub label: String,
    /// Its recipe.
    pub recipe: Recipe,
    /// Validation accuracy.
    pub validation: Accuracy,
    /// Test accuracy (at the end, once; `None` without `eval`).
    pub test: Option<Accuracy>,
    /// Multiply-accumulates per image of the merged system.
    pub flops: u64,
}

/// The search state `state.json` holds (resume).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SearchState {
    /// What the search is (genes, settings, budget...): a resumed search must match.
    fingerprint: serde_json::Value,
    /// CMA-ES.
    cma: Cmaes,
    /// Every evaluation so far.
    trace: Vec<TraceRow>,
    /// Seconds spent in the search's evaluations so far.
    seconds: f64,
}

/// What [`evolve`] measured (`evolve.json`).
#[derive(Clone, Debug, Serialize)]
pub struct EvolveReport {
    /// Search space.
    pub space: SearchSpace,
    /// What was maximised.
    pub fitness: Fitness,
    /// The genes searched.
    pub genes: Vec<Gene>,
    /// Evaluations of the search.
    pub evaluations: usize,
    /// Generations.
    pub generations: u64,
    /// Population.
    pub population: usize,
    /// Initial step size (units of each gene's range).
    pub sigma: f64,
    /// Seed.
    pub seed: u64,
    /// Validation images (and the seed of their draw).
    pub val_images: usize,
    /// Seed of the validation draw.
    pub val_seed: u64,
    /// Probe, BN-reset and validation images' folder.
    pub probe: String,
    /// Mean seconds per evaluation of the search (merge + BN reset + validation).
    pub seconds_per_evaluation: f64,
    /// Seconds of the search (evaluations only, summed over resumed runs).
    pub search_seconds: f64,
    /// Seconds of this run in all.
    pub seconds: f64,
    /// Statistics passes (one per stop used).
    pub statistics_passes: usize,
    /// The evolved recipe, the default recipe and the grid's best (validation, then test).
    pub results: Vec<Reference>,
    /// The best fitness after each generation.
    pub best_by_generation: Vec<f64>,
    /// How this was made: version, commit, command, date, machine, backend, data, every
    /// setting.
    pub provenance: crate::provenance::Provenance,
}

impl EvolveReport {
    /// The results as a Markdown table (validation and test, joint and average, FLOPs).
    pub fn table(&self) -> String {
        let mut t = String::from(
            "| recipe | val joint | val avg | test joint | test avg | GMACs |\n|---|---|---|---|---|---|\n",
        );
        let f = |a: &Option<Accuracy>, j: bool| {
            a.as_ref().map_or("-".into(), |a| {
                format!("{:.2}", if j { a.joint } else { a.avg })
            })
        };
        for r in &self.results {
            t.push_str(&format!(
                "| {} | {:.2} | {:.2} | {} | {} | {:.4} |\n",
                r.label,
                r.validation.joint,
                r.validation.avg,
                f(&r.test, true),
                f(&r.test, false),
                r.flops as f64 / 1e9
            ));
        }
        t
    }
}

/// What the candidates of one family share.
enum Family {
    /// Aligning merges: the endpoints after their BN reset, the probe draw, the statistics per
    /// stop (collected once each).
    Align {
        ep: Endpoints,
        probe: Batches,
        stats: BTreeMap<usize, Statistics>,
    },
    /// Task-vector merges: the fine-tunes and the base.
    TaskVector {
        inp: TaskVectorInputs,
        models: Vec<PathBuf>,
    },
}

/// What every candidate shares: the family's inputs, the BN-reset draw, the validation set.
struct Bench<'a> {
    family: Family,
    bn: Batches,
    val: EvalSet<'a>,
    device: &'a Runner,
}

impl Bench<'_> {
    /// Builds the merge of candidate `c` as `zipmerge merge` would and scores it on validation:
    /// its accuracy and the merged system's multiply-accumulates per image.
    fn score(
        &mut self,
        c: &Candidate,
        obs: &mut dyn Observer,
    ) -> Result<(Accuracy, u64), MergeError> {
        let mut quiet = crate::progress::Silent;
        let merged = match (&mut self.family, c) {
            (Family::Align { ep, probe, stats }, Candidate::Align { settings: s, stop }) => {
                s.check()?;
                s.knobs.check(&s.method, &ep.spec, ep.n())?;
                let stop = ep.spec.stop(stop)?;
                let st = if s.method.needs_statistics() {
                    let st = match stats.entry(stop.spaces) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(v) => {
                            let n = crate::merge::images(probe) as u64;
                            v.insert(phase(obs, "statistics", n, |p| {
                                statistics_upto(ep, probe, self.device, stop.spaces, p)
                            })?)
                        }
                    };
                    Some(&*st)
                } else {
                    None
                };
                let Combined { merged, .. } = combine(
                    ep,
                    st,
                    probe,
                    &self.bn,
                    &stop,
                    s,
                    self.device,
                    serde_json::Value::Null,
                    &mut quiet,
                    &mut |_, _| {},
                )?;
                merged
            }
            (Family::TaskVector { inp, models }, Candidate::TaskVector(tv)) => {
                tv.check(models.len())
                    .map_err(|e| crate::merge::tv_error(e, models))?;
                combine_task_vectors(
                    inp,
                    tv,
                    models,
                    &self.bn,
                    self.device,
                    serde_json::Value::Null,
                    &mut quiet,
                    &mut |_, _| {},
                )?
                .0
            }
            _ => return Err(MergeError::Internal("a candidate of another family".into())),
        };
        let sys = merged.system(self.device)?;
        let flops = sys.flops();
        let acc = evaluate_on(&self.val, &[sys], self.device, &mut |_| {}, None);
        Ok((acc, flops))
    }
}

fn check_plan(plan: &EvolvePlan) -> Result<(), MergeError> {
    if plan.budget == 0 {
        return Err(MergeError::param(
            MergeParam::Budget,
            0,
            "expected at least one evaluation",
        ));
    }
    if let Some(p) = plan.population.filter(|&p| p < 2) {
        return Err(MergeError::param(
            MergeParam::Population,
            p,
            "CMA-ES needs a population of at least 2",
        ));
    }
    if !(plan.sigma.is_finite() && plan.sigma > 0.0) {
        return Err(MergeError::param(
            MergeParam::Sigma,
            plan.sigma,
            "expected a finite number > 0 (in units of each gene's range; default 1/6)",
        ));
    }
    if plan.val_images == 0 {
        return Err(MergeError::param(
            MergeParam::ValImages,
            0,
            "the fitness needs at least one validation image",
        ));
    }
    plan.settings.check()
}

/// The trace as CSV: `generation,evaluation,fitness,joint,avg,stop,<gene names...>`.
pub fn trace_csv(genes: &[Gene], trace: &[TraceRow]) -> String {
    let mut c = String::from("generation,evaluation,fitness,joint,avg,stop");
    for g in genes {
        c.push(',');
        c.push_str(&g.name);
    }
    c.push('\n');
    for r in trace {
        c.push_str(&format!(
            "{},{},{:.4},{:.4},{:.4},{}",
            r.generation, r.evaluation, r.fitness, r.joint, r.avg, r.stop
        ));
        for v in &r.genes {
            c.push_str(&format!(",{v:.6}"));
        }
        c.push('\n');
    }
    c
}

/// Runs the search (module docs).
///
/// # Errors
/// [`MergeError::Param`] naming the option: a budget of 0, a population below 2, a bad sigma,
/// more validation images than the train folder has left after the draws, a genome the method
/// cannot have; an `out` that holds another search or, without `resume`, any search; the
/// merge's errors naming the model, folder or option.
pub fn evolve(plan: &EvolvePlan, obs: &mut dyn Observer) -> Result<EvolveReport, ExperimentError> {
    let t_run = Instant::now();
    check_plan(plan)?;
    let mut base = plan.settings.clone();
    if plan.space.has_path() {
        // the aligned models are exact copies only without the merge epsilon
        base.merge_eps = 0.0;
    }
    // the family's inputs, loaded and checked before any image is decoded
    let (family_ep, tv_inputs) = match &plan.task_vectors {
        None => (Some(Endpoints::load(&plan.models)?), None),
        Some(t) => {
            if plan.space != SearchSpace::Ps {
                return Err(MergeError::param(
                    MergeParam::SearchSpace,
                    plan.space.name(),
                    "task-vector merges have parameter-space genes only (ps)",
                )
                .into());
            }
            t.settings
                .check(plan.models.len())
                .map_err(|e| crate::merge::tv_error(e, &plan.models))?;
            let tplan = TaskVectorPlan {
                base: t.base.clone(),
                models: plan.models.clone(),
                settings: t.settings.clone(),
                bn_reset_images: base.bn_reset_images,
                batch_size: base.batch_size,
                seed: base.seed,
                probe_dir: plan.probe_dir.clone(),
                eval: None,
                cache_gib: plan.cache_gib,
                device: plan.device.clone(),
                backend: plan.backend.clone(),
                command: plan.command.clone(),
            };
            (None, Some((load_inputs(&tplan)?, t)))
        }
    };
    let (spec, prep) = match (&family_ep, &tv_inputs) {
        (Some(ep), _) => (ep.spec.clone(), ep.prep()),
        (_, Some((inp, _))) => (inp.ep.spec.clone(), inp.ep.prep()),
        _ => unreachable!("one family"),
    };
    let n = plan.models.len();
    let stop = spec.stop(&plan.stop)?;
    let genome = match &tv_inputs {
        Some((_, t)) => {
            if !plan.search_stops.is_empty() || plan.search_repair {
                return Err(MergeError::param(
                    MergeParam::SearchSpace,
                    "ps",
                    "--search-stop/--search-repair are genes of aligning merges, not of task-vector merges",
                ).into());
            }
            Genome::task_vectors(&spec, n, &base, &t.settings)
        }
        None => {
            let mut spaces_upto = stop.spaces;
            for st in &plan.search_stops {
                spaces_upto = spaces_upto.max(spec.stop(st)?.spaces);
            }
            Genome::new(
                plan.space,
                &spec,
                n,
                &base,
                &stop.name,
                &plan.search_stops,
                spaces_upto,
                plan.search_repair,
                plan.ends,
            )?
        }
    };
    if genome.is_empty() {
        return Err(MergeError::param(
            MergeParam::SearchSpace,
            "ps",
            "nothing to search: the method has no genes at this stop",
        )
        .into());
    }
    let population = plan
        .population
        .unwrap_or_else(|| default_population(genome.len()));
    let fingerprint = serde_json::json!({
        "models": plan.models,
        "task_vectors": plan.task_vectors.as_ref().map(|t| (&t.base, &t.settings)),
        "genes": genome.genes,
        "space": plan.space,
        "settings": base,
        "stop": stop.name,
        "population": population,
        "sigma": plan.sigma,
        "val_images": plan.val_images,
        "fitness": plan.fitness,
    });
    let state_path = plan.out.join("state.json");
    let resumed: Option<SearchState> = if state_path.exists() {
        if !plan.resume {
            return Err(MergeError::param(
                MergeParam::Out,
                plan.out.display(),
                "this --out folder holds a search (state.json): pass --resume to continue it, or choose another --out",
            ).into());
        }
        let bytes = std::fs::read(&state_path).map_err(|e| {
            MergeError::param(
                MergeParam::Resume,
                state_path.display(),
                format!("cannot be read ({e})"),
            )
        })?;
        let st: SearchState = serde_json::from_slice(&bytes).map_err(|e| {
            MergeError::param(
                MergeParam::Resume,
                state_path.display(),
                format!("not a search state ({e})"),
            )
        })?;
        if st.fingerprint != fingerprint {
            return Err(MergeError::param(
                MergeParam::Resume,
                state_path.display(),
                "is the state of a search with other models, genes or settings: resume with the options it was started with",
            ).into());
        }
        Some(st)
    } else {
        None
    };

    // data: the family's draws, and the validation draw from the images they leave
    let draws = match &tv_inputs {
        None => base.draws(),
        Some(_) => Draws {
            probe: None,
            bn: ProbeOptions::bn_reset_draw(base.bn_reset_images, base.batch_size, base.seed),
        },
    };
    let probe = load_probe(&plan.probe_dir, prep, plan.cache_gib, &draws, obs)?;
    let val_seed = base.seed.wrapping_add(2);
    let val = load_validation(
        &plan.probe_dir,
        prep,
        plan.cache_gib,
        &draws,
        plan.val_images,
        val_seed,
    )?;
    let tasks = match (&family_ep, &tv_inputs) {
        (Some(ep), _) => {
            check_evaluation(&ep.heads(), &val.set, &ep.tasks()).map_err(MergeError::from)?;
            ep.tasks()
        }
        (_, Some((inp, _))) => {
            check_evaluation(&inp.ep.heads(), &val.set, &inp.ep.tasks())
                .map_err(MergeError::from)?;
            inp.ep.tasks()
        }
        _ => unreachable!("one family"),
    };
    obs.info(&format!(
        "validation: {} train images of {} (seed {val_seed}), disjoint from the probe and BN-reset draws; the test folder is not read until the search ends",
        val.set.len(),
        plan.probe_dir.display()
    ));
    std::fs::create_dir_all(&plan.out).map_err(|e| ExperimentError::output(&plan.out, e))?;

    let bn_b = bn_batches(&probe, draws.bn.as_ref())?;
    let family = match (family_ep, tv_inputs) {
        (Some(mut ep), _) => {
            let probe_b =
                if base.method.needs_statistics() || base.corrections.any() || plan.search_repair {
                    probe_batches(&probe, &base.probe_options(), obs)?
                } else {
                    vec![]
                };
            base.reset_endpoints(&mut ep, &bn_b, &plan.device, obs)?;
            Family::Align {
                ep,
                probe: probe_b,
                stats: BTreeMap::new(),
            }
        }
        (_, Some((inp, _))) => Family::TaskVector {
            inp,
            models: plan.models.clone(),
        },
        _ => unreachable!("one family"),
    };
    let val_set = EvalSet::new(&val.set, &tasks, base.batch_size, &plan.device, true);
    let mut bench = Bench {
        family,
        bn: bn_b,
        val: val_set,
        device: &plan.device,
    };

    // reference points on validation: the default recipe and the grid's best
    let recipe_of = |c: &Candidate| Recipe {
        recipe_version: crate::merge::recipe::RECIPE_VERSION,
        models: plan.models.clone(),
        probe_dir: plan.probe_dir.clone(),
        combine: match (c, &plan.task_vectors) {
            (Candidate::Align { settings, stop }, _) => Combine::Align {
                stop: stop.clone(),
                settings: settings.clone(),
            },
            (Candidate::TaskVector(tv), Some(t)) => Combine::TaskVector {
                base: t.base.clone(),
                settings: tv.clone(),
                bn_reset_images: base.bn_reset_images,
                batch_size: base.batch_size,
                seed: base.seed,
            },
            (Candidate::TaskVector(_), None) => unreachable!("task-vector candidates have a base"),
        },
        eval: plan.eval.clone(),
    };
    let mut results: Vec<Reference> = Vec::new();
    {
        let default = match &plan.task_vectors {
            Some(t) => Candidate::TaskVector(t.settings.clone()),
            None if plan.space.has_path() => {
                // the default data-flow path: every slot from the merge, unscaled
                let (mut s, stop) = genome.decode(&vec![0.5; genome.len()], &spec);
                s.knobs = Default::default();
                Candidate::Align { settings: s, stop }
            }
            None => Candidate::Align {
                settings: base.clone(),
                stop: stop.name.clone(),
            },
        };
        let (acc, flops) = bench.score(&default, obs)?;
        obs.info(&format!(
            "default recipe: validation joint {:.2}, avg {:.2}",
            acc.joint, acc.avg
        ));
        results.push(Reference {
            label: "default".into(),
            recipe: recipe_of(&default),
            validation: acc,
            test: None,
            flops,
        });
    }
    if let (Some((alphas, betas)), Method::Zipit { .. }, SearchSpace::Ps, None) =
        (&plan.grid, &base.method, plan.space, &plan.task_vectors)
    {
        let cells: Vec<(f64, f64)> = alphas
            .iter()
            .flat_map(|&a| betas.iter().map(move |&b| (a, b)))
            .collect();
        let cell = |a: f64, b: f64| -> Result<Candidate, MergeError> {
            Ok(Candidate::Align {
                settings: MergeSettings {
                    method: Method::parse("zipit", a, b, base.seed)?,
                    ..base.clone()
                },
                stop: stop.name.clone(),
            })
        };
        obs.begin("grid (validation)", cells.len() as u64);
        let mut best: Option<(f64, f64, Accuracy, u64)> = None;
        for (i, &(a, b)) in cells.iter().enumerate() {
            let (acc, flops) = bench.score(&cell(a, b)?, obs)?;
            if best
                .as_ref()
                .is_none_or(|bst| plan.fitness.of(&acc) > plan.fitness.of(&bst.2))
            {
                best = Some((a, b, acc, flops));
            }
            obs.advance(i as u64 + 1);
        }
        obs.end();
        if let Some((a, b, acc, flops)) = best {
            obs.info(&format!(
                "grid best on validation: alpha {a}, beta {b}: joint {:.2}, avg {:.2} ({} cells)",
                acc.joint,
                acc.avg,
                cells.len()
            ));
            results.push(Reference {
                label: format!("grid best (alpha {a}, beta {b}; {} cells)", cells.len()),
                recipe: recipe_of(&cell(a, b)?),
                validation: acc,
                test: None,
                flops,
            });
        }
    }

    // the search
    let (mut cma, mut trace, mut seconds) = match resumed {
        Some(st) => {
            obs.info(&format!(
                "resuming at generation {}, {} evaluations done",
                st.cma.generation,
                st.trace.len()
            ));
            (st.cma, st.trace, st.seconds)
        }
        None => {
            let cma = Cmaes::new(
                &vec![0.5; genome.len()],
                plan.sigma,
                Some(population),
                base.seed,
            )
            .map_err(|e| MergeError::param(MergeParam::Population, population, e.to_string()))?;
            (cma, Vec::new(), 0.0)
        }
    };
    obs.info(&format!(
        "searching {} genes ({} space), population {population}, budget {} evaluations",
        genome.len(),
        plan.space.name(),
        plan.budget
    ));
    obs.begin("evolve", plan.budget as u64);
    obs.advance(trace.len() as u64);
    while trace.len() < plan.budget {
        let xs = cma.ask();
        // a search resumed mid-generation has scored the generation's first samples already
        let mut fit: Vec<f64> = trace
            .iter()
            .filter(|r| r.generation == cma.generation)
            .map(|r| -r.fitness)
            .collect();
        let left = plan.budget - trace.len();
        for x in xs.iter().skip(fit.len()).take(left) {
            let t = Instant::now();
            let c = genome.candidate(x, &spec);
            let (acc, _) = bench.score(&c, obs)?;
            seconds += t.elapsed().as_secs_f64();
            let f = plan.fitness.of(&acc);
            let st = match &c {
                Candidate::Align { stop, .. } => stop.clone(),
                Candidate::TaskVector(_) => stop.name.clone(),
            };
            fit.push(-f);
            trace.push(TraceRow {
                generation: cma.generation,
                evaluation: trace.len() as u64 + 1,
                fitness: f,
                joint: acc.joint,
                avg: acc.avg,
                stop: st,
                genes: genome
                    .genes
                    .iter()
                    .zip(x)
                    .map(|(g, &xi)| g.value(xi))
                    .collect(),
                x: x.clone(),
            });
            obs.advance(trace.len() as u64);
        }
        if fit.len() == xs.len() {
            cma.tell(&xs, &fit)
                .map_err(|e| MergeError::Internal(format!("CMA-ES: {e}")))?;
        }
        let state = SearchState {
            fingerprint: fingerprint.clone(),
            cma: cma.clone(),
            trace: trace.clone(),
            seconds,
        };
        write(&state_path, &json_bytes(&state)?)?;
        write(
            &plan.out.join("trace.csv"),
            trace_csv(&genome.genes, &trace).as_bytes(),
        )?;
    }
    obs.end();

    // the best candidate (first of the best fitness)
    let best = trace
        .iter()
        .fold(None::<&TraceRow>, |b, r| match b {
            Some(b) if b.fitness >= r.fitness => Some(b),
            _ => Some(r),
        })
        .ok_or_else(|| MergeError::Internal("the search made no evaluation".into()))?;
    let best_candidate = genome.candidate(&best.x, &spec);
    let (best_acc, best_flops) = bench.score(&best_candidate, obs)?;
    if best_acc.joint != best.joint || best_acc.avg != best.avg {
        return Err(MergeError::Internal(format!(
            "the best candidate scored {} on the search and {} rebuilt",
            best.joint, best_acc.joint
        ))
        .into());
    }
    let best_recipe = recipe_of(&best_candidate);
    results.insert(
        0,
        Reference {
            label: "evolved".into(),
            recipe: best_recipe.clone(),
            validation: best_acc,
            test: None,
            flops: best_flops,
        },
    );
    let mut best_by_generation = Vec::new();
    let mut top = f64::MIN;
    for g in 0..=trace.last().map_or(0, |r| r.generation) {
        for r in trace.iter().filter(|r| r.generation == g) {
            top = top.max(r.fitness);
        }
        best_by_generation.push(top);
    }
    let statistics_passes = match &bench.family {
        Family::Align { stats, .. } => stats.len(),
        Family::TaskVector { .. } => 0,
    };
    drop(bench);
    write(&plan.out.join("best.json"), &json_bytes(&best_recipe)?)?;

    // once, at the end: the merges of the three recipes on the test set; the evolved one is
    // saved as the model
    for (i, r) in results.iter_mut().enumerate() {
        let rp = r.recipe.plan(
            plan.cache_gib,
            plan.device.clone(),
            &plan.backend,
            plan.command.clone(),
        );
        obs.info(&format!("{}: merging and evaluating on test", r.label));
        let model = plan.out.join("model");
        match rp {
            RecipePlan::Align(mp) => {
                let out = super::merge::run(&mp, obs)?;
                r.test = out.report.accuracy.clone();
                if i == 0 {
                    out.save(&model)?;
                }
            }
            RecipePlan::TaskVector(tp) => {
                let out = super::task_vectors::run_task_vectors(&tp, obs)?;
                r.test = out.report.accuracy.clone();
                if i == 0 {
                    out.save(&model)?;
                }
            }
        }
    }
    let mut data = vec![
        crate::provenance::DataFolder {
            role: "probe",
            path: plan.probe_dir.display().to_string(),
            images: probe.total,
        },
        crate::provenance::DataFolder {
            role: "validation",
            path: plan.probe_dir.display().to_string(),
            images: val.set.len(),
        },
    ];
    if let (Some(e), Some(a)) = (&plan.eval, results.first().and_then(|r| r.test.as_ref())) {
        data.push(crate::provenance::DataFolder::test_split(&e.root, a.images));
    }
    let provenance = crate::provenance::Provenance::new(
        &plan.command,
        &plan.backend,
        data,
        &serde_json::json!({
            "fingerprint": fingerprint,
            "budget": plan.budget,
            "ends": plan.ends,
            "search_stops": plan.search_stops,
            "search_repair": plan.search_repair,
            "grid": plan.grid,
            "val_seed": val_seed,
        }),
    );
    let report = EvolveReport {
        provenance,
        space: plan.space,
        fitness: plan.fitness,
        genes: genome.genes.clone(),
        evaluations: trace.len(),
        generations: best_by_generation.len() as u64,
        population,
        sigma: plan.sigma,
        seed: base.seed,
        val_images: val.set.len(),
        val_seed,
        probe: plan.probe_dir.display().to_string(),
        seconds_per_evaluation: seconds / trace.len().max(1) as f64,
        search_seconds: seconds,
        seconds: t_run.elapsed().as_secs_f64(),
        statistics_passes,
        results,
        best_by_generation,
    };
    let refs: Vec<(String, f64)> = report
        .results
        .iter()
        .skip(1)
        .map(|r| (r.label.clone(), plan.fitness.of(&r.validation)))
        .collect();
    let points: Vec<(f64, f64)> = trace
        .iter()
        .map(|r| (r.evaluation as f64, r.fitness))
        .collect();
    let title = format!(
        "zipmerge evolve: {} space, {} genes, {} fitness on {} validation images",
        plan.space.name(),
        genome.len(),
        match plan.fitness {
            Fitness::Joint => "joint",
            Fitness::Avg => "avg",
        },
        val.set.len()
    );
    crate::experiments::plot::fitness_plot(&points, &refs, &title, &plan.out.join("fitness.png"))
        .map_err(|e| ExperimentError::plot("the fitness plot", e))?;
    write(&plan.out.join("evolve.json"), &json_bytes(&report)?)?;
    Ok(report)
}
