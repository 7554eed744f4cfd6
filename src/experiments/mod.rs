//! Experiments built from the pipeline steps: partial-zip sweeps over stops and the ZipIt!
//! Table 1 layout. Statistics are collected once per endpoint pair and every space is matched
//! once; only the rewriting, BN reset and evaluation run per stop.

pub mod plot;
pub mod prepare;
pub mod table;

pub use prepare::{find_groups, Inputs};

use std::time::Instant;

use serde::Serialize;

use crate::checkpoint::ModelManifest;
use crate::correct::Corrections;
use crate::data::ImageSet;
use crate::error::MergeError;
use crate::eval::runner::{evaluate_on, EvalSet, Outputs};
use crate::eval::Accuracy;
use crate::matching::MergeUnmerge;
use crate::merge::{self, Endpoints, Method, Statistics};
use crate::models::Net;
use crate::spec::Stop;
use crate::system::runner::Runner;
use crate::system::System;

/// One evaluated configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Row label (`Model A`, `ZipIt!13/20`, `Ensemble`, ...).
    pub label: String,
    /// Stop name, for merged models.
    pub stop: Option<String>,
    /// Layers zipped / total (merged models).
    pub zipped_layers: Option<usize>,
    /// Total counted layers.
    pub total_layers: usize,
    /// Forward MACs per image of the whole system.
    pub flops: u64,
    /// Accuracies.
    pub accuracy: Accuracy,
    /// Seconds spent on this row (rewrite + BN reset + eval).
    pub seconds: f64,
}

/// Shared inputs of an experiment on one endpoint pair.
///
/// The test set is batched and normalised once for all rows ([`EvalSet`]), and the endpoints'
/// head outputs computed by [`Context::endpoint_row`] are kept, so that
/// [`Context::ensemble_row`] does not run the endpoints again.
pub struct Context<'a> {
    /// The endpoints (after the endpoint BN reset, if any).
    pub endpoints: &'a Endpoints,
    /// BN-reset batches (empty = no reset).
    pub bn_batches: &'a [Vec<Vec<u8>>],
    /// Test images.
    pub test: &'a ImageSet,
    /// Tasks.
    pub tasks: &'a [Vec<usize>],
    /// Eval batch size.
    pub batch_size: usize,
    /// Device.
    pub device: &'a Runner,
    /// Merge epsilon.
    pub eps: f64,
    /// The batched test set ([`Context::new`] builds it).
    eval_set: EvalSet<'a>,
    /// Endpoint outputs on `eval_set`, filled by [`Context::endpoint_row`].
    endpoint_outputs: std::cell::RefCell<Vec<Option<Outputs>>>,
    /// Probe batches of the post-merge corrections ([`Context::with_probe`]).
    probe: &'a [Vec<Vec<u8>>],
}

/// Counts forward passes over the probe set, to show statistics are computed once.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Statistics passes (one per collection over the probe set).
    pub statistics_passes: usize,
    /// Matching runs (one per method and space set).
    pub matching_runs: usize,
}

impl<'a> Context<'a> {
    /// An experiment's shared inputs; batches and (on the CPU engine, within
    /// [`crate::eval::runner::INPUT_CACHE_BYTES`]) normalises `test` once.
    pub fn new(
        endpoints: &'a Endpoints,
        bn_batches: &'a [Vec<Vec<u8>>],
        test: &'a ImageSet,
        tasks: &'a [Vec<usize>],
        batch_size: usize,
        device: &'a Runner,
        eps: f64,
    ) -> Self {
        Self {
            endpoints,
            bn_batches,
            test,
            tasks,
            batch_size,
            device,
            eps,
            eval_set: EvalSet::new(test, tasks, batch_size, device, true),
            endpoint_outputs: std::cell::RefCell::new(vec![None; endpoints.n()]),
            probe: &[],
        }
    }

    /// The same context with probe batches for [`Context::corrected_row`] (REPAIR, refit).
    pub fn with_probe(self, probe: &'a [Vec<Vec<u8>>]) -> Self {
        Self { probe, ..self }
    }

    fn evaluate(&self, systems: &[System], progress: &mut dyn FnMut(usize)) -> Accuracy {
        evaluate_on(&self.eval_set, systems, self.device, progress, None)
    }

    /// Evaluates endpoint `i` alone.
    ///
    /// # Errors
    /// [`MergeError::Model`] if its weights do not fit.
    pub fn endpoint_row(
        &self,
        i: usize,
        label: &str,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Row, MergeError> {
        let t = Instant::now();
        let sys = self.endpoint_system(i)?;
        let mut slot = [self.endpoint_outputs.borrow_mut()[i].take()];
        let accuracy = evaluate_on(
            &self.eval_set,
            std::slice::from_ref(&sys),
            self.device,
            progress,
            Some(&mut slot),
        );
        self.endpoint_outputs.borrow_mut()[i] = slot[0].take();
        Ok(Row {
            label: label.into(),
            stop: None,
            zipped_layers: None,
            total_layers: self.endpoints.spec.total_layers(),
            flops: sys.flops(),
            accuracy,
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    fn endpoint_system(&self, i: usize) -> Result<System, MergeError> {
        let m: &ModelManifest = &self.endpoints.manifests[i];
        let net = Net::from_state(&m.net_config(), &self.endpoints.states[i], self.device)?;
        Ok(System::single(m.clone(), net))
    }

    /// Evaluates the ensemble of all endpoints (multi-head rules, reference §5.3).
    ///
    /// # Errors
    /// [`MergeError::Model`] if weights do not fit.
    pub fn ensemble_row(&self, progress: &mut dyn FnMut(usize)) -> Result<Row, MergeError> {
        let t = Instant::now();
        let systems: Vec<System> = (0..self.endpoints.n())
            .map(|i| self.endpoint_system(i))
            .collect::<Result<_, _>>()?;
        let mut cache = self.endpoint_outputs.borrow_mut();
        let accuracy = evaluate_on(
            &self.eval_set,
            &systems,
            self.device,
            progress,
            Some(cache.as_mut_slice()),
        );
        Ok(Row {
            label: "Ensemble".into(),
            stop: None,
            zipped_layers: None,
            total_layers: self.endpoints.spec.total_layers(),
            flops: systems.iter().map(System::flops).sum(),
            accuracy,
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// Rewrites at `stop` with already matched spaces, resets BN and evaluates.
    ///
    /// # Errors
    /// As [`merge::build`].
    pub fn merged_row(
        &self,
        label: &str,
        transforms: &[MergeUnmerge],
        stop: &Stop,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Row, MergeError> {
        self.merged_row_bn(label, transforms, stop, true, progress)
    }

    /// As [`Context::merged_row`], with the merged model's BN reset optional (the reference
    /// evaluates CIFAR Git Re-Basin merges without one, reference doc §3.5).
    ///
    /// # Errors
    /// As [`merge::build`].
    pub fn merged_row_bn(
        &self,
        label: &str,
        transforms: &[MergeUnmerge],
        stop: &Stop,
        reset_bn: bool,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Row, MergeError> {
        self.corrected_row(
            label,
            transforms,
            stop,
            reset_bn,
            &Corrections::default(),
            progress,
        )
    }

    /// As [`Context::merged_row_bn`], then the post-merge corrections `c` on the probe batches
    /// of [`Context::with_probe`] ([`crate::correct::apply`]).
    ///
    /// # Errors
    /// As [`merge::build`] and [`crate::correct::apply`].
    pub fn corrected_row(
        &self,
        label: &str,
        transforms: &[MergeUnmerge],
        stop: &Stop,
        reset_bn: bool,
        c: &Corrections,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Row, MergeError> {
        let t = Instant::now();
        let mut m = merge::build(self.endpoints, transforms, stop, serde_json::Value::Null)?;
        if reset_bn && !self.bn_batches.is_empty() {
            m.reset_bn(self.bn_batches, self.device, &mut |_| {})?;
        }
        if c.any() {
            if self.probe.is_empty() {
                return Err(MergeError::NoProbeImages);
            }
            crate::correct::apply(
                &mut m.zipped.trunk,
                &self.endpoints.states,
                &self.endpoints.spec,
                transforms,
                stop,
                self.probe,
                self.endpoints.prep(),
                c,
            )?;
        }
        let sys = m.system(self.device)?;
        let accuracy = self.evaluate(std::slice::from_ref(&sys), progress);
        Ok(Row {
            label: label.into(),
            stop: Some(stop.name.clone()),
            zipped_layers: Some(stop.zipped),
            total_layers: stop.total,
            flops: sys.flops(),
            accuracy,
            seconds: t.elapsed().as_secs_f64(),
        })
    }
}

/// Matches every space once for `method` (all stops reuse the result), with dual-space
/// `lambda` (0: activations only; [`merge::match_spaces_with`]).
///
/// # Errors
/// As [`merge::match_spaces_with`].
pub fn match_all(
    ep: &Endpoints,
    method: &Method,
    stats: Option<&Statistics>,
    eps: f64,
    lambda: f64,
    counters: &mut Counters,
) -> Result<Vec<MergeUnmerge>, MergeError> {
    counters.matching_runs += 1;
    merge::match_spaces_with(ep, method, stats, ep.spec.spaces.len(), eps, lambda)
}

/// Population standard deviation and mean of a list.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}
