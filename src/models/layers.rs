//! Shared building blocks of the model files: conv/BN constructors and the forward context that
//! lets one forward pass serve training, evaluation, feature capture ("taps") and BN reset.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

/// A conv with square kernel `k`, stride `s`, padding `p` on every side and no bias. Weights
/// start at zero: real initial values come from [`crate::models::init_state`].
pub fn conv(cin: usize, cout: usize, k: usize, s: usize, p: usize, device: &Device) -> Conv2d {
    conv_config(cin, cout, k, s, p)
        .with_bias(false)
        .init(device)
}

/// A 3x3 conv with padding 1 (the only conv shape ResNet-20 and VGG-11 use), zero weights.
pub fn conv3x3(cin: usize, cout: usize, stride: usize, bias: bool, device: &Device) -> Conv2d {
    conv_config(cin, cout, 3, stride, 1)
        .with_bias(bias)
        .init(device)
}

fn conv_config(cin: usize, cout: usize, k: usize, s: usize, p: usize) -> Conv2dConfig {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([s, s])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_initializer(Initializer::Zeros)
}

/// A linear layer `cin -> out` with bias and zero weights (the classifier of every model file).
pub fn linear(cin: usize, out: usize, device: &Device) -> Linear {
    LinearConfig::new(cin, out)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

/// BatchNorm2d with PyTorch's defaults (eps 1e-5, momentum 0.1).
pub fn bn(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels).init(device)
}

/// Projection shortcut of a residual block: a conv (stride s, no bias) then BN. In PyTorch
/// naming `shortcut.0`/`.1` (ResNet-20, 3x3 conv) or `downsample.0`/`.1` (ResNet-50, 1x1 conv).
#[derive(Module, Debug)]
pub struct ConvBn {
    /// `<field>.0` in PyTorch naming.
    pub conv: Conv2d,
    /// `<field>.1` in PyTorch naming.
    pub bn: BatchNorm,
}

impl ConvBn {
    /// `x: [batch, cin, H, W] -> [batch, cout, H/s, W/s]`; `name` is the PyTorch module name
    /// (`layer2.0.shortcut`), the BN is recorded as `{name}.1`.
    pub fn forward(&self, name: &str, x: Tensor<4>, ctx: &mut ForwardCtx) -> Tensor<4> {
        ctx.bn(&format!("{name}.1"), &self.bn, self.conv.forward(x))
    }
}

/// Global average pooling then `fc`: `x: [batch, C, H, W] -> [batch, out, 1, 1]` (the form of
/// the output cut of a ResNet).
pub fn pool_linear(fc: &Linear, x: Tensor<4>) -> Tensor<4> {
    let [b, c, _, _] = x.dims();
    let y = fc.forward(x.mean_dims(&[2, 3]).reshape([b, c]));
    let o = y.dims()[1];
    y.reshape([b, o, 1, 1])
}

/// How BatchNorm layers behave in a forward pass.
#[derive(Debug, Default)]
pub enum BnMode {
    /// burn's own behaviour: batch statistics (and running-stat updates) on an autodiff device
    /// in training, running statistics otherwise. Used for training and evaluation.
    #[default]
    Module,
    /// Normalise with the batch's own statistics and record, per BN layer, the batch mean and the
    /// unbiased batch variance (PyTorch train-mode semantics; reference doc §4.4). Used by BN reset.
    Record,
    /// Normalise with the running statistics even on an autodiff device (BN frozen while the
    /// other parameters train; `distill --bn frozen`).
    Running,
}

pub use crate::engine::BnRecord;

/// Mutable side channel of one forward pass.
#[derive(Default)]
pub struct ForwardCtx {
    /// BatchNorm behaviour.
    pub bn_mode: BnMode,
    /// Recorded BN statistics (filled in [`BnMode::Record`]), in forward order.
    pub bn_records: Vec<BnRecord>,
    /// When `Some`, the features at every merge point, in feature-space order
    /// (`[batch, channels, height, width]` each; reference doc §2).
    pub taps: Option<Vec<Tensor<4>>>,
    /// Prefix of recorded BN names (set by multi-part forwards: `trunk:`, `head0:`, ...).
    pub prefix: String,
}

impl ForwardCtx {
    /// A context that captures the features at every merge point.
    pub fn with_taps() -> Self {
        Self {
            taps: Some(Vec::new()),
            ..Default::default()
        }
    }

    /// A context that records BN batch statistics.
    pub fn recording_bn() -> Self {
        Self {
            bn_mode: BnMode::Record,
            ..Default::default()
        }
    }

    /// Stores the features of the next merge point, if capturing.
    pub fn tap(&mut self, x: &Tensor<4>) {
        if let Some(t) = self.taps.as_mut() {
            t.push(x.clone());
        }
    }

    /// Applies BatchNorm `m` (named `name`, PyTorch naming) to `x: [batch, C, H, W]`.
    pub fn bn(&mut self, name: &str, m: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
        match self.bn_mode {
            BnMode::Module => m.forward(x),
            // burn's own inference normalisation (the same kernel as an evaluation forward)
            BnMode::Running => burn::tensor::module::batch_norm(
                x,
                m.gamma.val(),
                m.beta.val(),
                m.running_mean.value(),
                m.running_var.value(),
                m.epsilon,
            ),
            BnMode::Record => {
                let [b, c, h, w] = x.dims();
                let n = (b * h * w) as f64;
                let flat = x.clone().swap_dims(0, 1).reshape([c, b * h * w]);
                let (var_b, mean) = flat.var_mean_bias(1); // [C,1] each
                let var_u = var_b.clone().mul_scalar(n / (n - 1.0).max(1.0));
                self.bn_records.push((
                    format!("{}{name}", self.prefix),
                    mean.clone()
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap_or_default(),
                    var_u.into_data().try_to_vec::<f32>().unwrap_or_default(),
                ));
                let mean = mean.reshape([1, c, 1, 1]);
                let std = var_b.add_scalar(m.epsilon).sqrt().reshape([1, c, 1, 1]);
                let gamma = m.gamma.val().reshape([1, c, 1, 1]);
                let beta = m.beta.val().reshape([1, c, 1, 1]);
                (x - mean) / std * gamma + beta
            }
        }
    }
}

/// Number of float parameters of a module.
pub fn param_count<M: Module>(m: &M) -> usize {
    m.num_params()
}

/// torchvision's ResNet stem: `relu(bn(conv(x)))` then max pooling 3x3, stride 2, padding 1
/// (`x: [batch, 3, H, W] -> [batch, b, H/4, W/4]` for the 7x7 stride-2 conv).
pub fn stem_max_pool(
    conv: &Conv2d,
    bn: &BatchNorm,
    x: Tensor<4>,
    ctx: &mut ForwardCtx,
) -> Tensor<4> {
    let h = burn::tensor::activation::relu(ctx.bn("bn1", bn, conv.forward(x)));
    burn::tensor::module::max_pool2d(
        h,
        burn::tensor::ops::MaxPoolOptions {
            kernel_size: [3, 3],
            stride: [2, 2],
            padding: [(1, 1), (1, 1)],
            dilation: [1, 1],
            ceil_mode: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// T12 (per batch): recorded statistics are the batch mean and the *unbiased* variance over
    /// B*H*W; the output is normalised with the biased batch variance (PyTorch train mode).
    #[test]
    fn t12_bn_record_mode_uses_batch_statistics() {
        let d = Device::flex();
        let m = bn(1, &d);
        // x: [B=2, C=1, H=1, W=2] = 1, 2, 3, 4 -> mean 2.5, biased var 1.25, unbiased 5/3
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 1, 1, 2]),
            &d,
        );
        let mut ctx = ForwardCtx::recording_bn();
        let y = ctx
            .bn("bn1", &m, x)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let (name, mean, var) = &ctx.bn_records[0];
        assert_eq!(name, "bn1");
        assert!((mean[0] - 2.5).abs() < 1e-6);
        assert!((var[0] - 5.0 / 3.0).abs() < 1e-5);
        let s = (1.25f32 + 1e-5).sqrt();
        for (g, w) in y.iter().zip([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
            assert!((g - w).abs() < 1e-5, "{y:?}");
        }
    }
}
