//! EfficientNet-Lite0 with efficientnet-pytorch's names (`_conv_stem`, `_blocks.N._depthwise_conv`,
//! `_fc`, ...): ReLU6, BatchNorm eps 1e-3, TensorFlow "same" padding, no squeeze-excite.
//! Target layer: the head conv + BN + ReLU6 output (1280 x 7 x 7 at 224).

use tch::{Tensor, nn};

use super::{Backbone, Layer};

/// One stage: repeats, kernel, stride of its first block, expansion, input and output widths
/// (the `r1_k3_s11_e1_i32_o16` strings of the TF builder).
#[derive(Clone, Copy, Debug)]
pub struct Stage {
    pub repeats: usize,
    pub kernel: i64,
    pub stride: i64,
    pub expand: i64,
    pub cin: i64,
    pub cout: i64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub stages: Vec<Stage>,
    pub stem: i64,
    pub head: i64,
    pub dropout: f64,
}

impl Config {
    pub fn lite0() -> Self {
        let s = |repeats, kernel, stride, expand, cin, cout| Stage { repeats, kernel, stride, expand, cin, cout };
        Config {
            stages: vec![
                s(1, 3, 1, 1, 32, 16),
                s(2, 3, 2, 6, 16, 24),
                s(2, 5, 2, 6, 24, 40),
                s(3, 3, 2, 6, 40, 80),
                s(3, 5, 1, 6, 80, 112),
                s(4, 5, 2, 6, 112, 192),
                s(1, 3, 1, 6, 192, 320),
            ],
            stem: 32,
            head: 1280,
            dropout: 0.2,
        }
    }
}

/// A conv with TensorFlow's "same" padding, computed from the input size as TF does
/// (the extra pixel of an odd total goes to the bottom/right).
struct SameConv {
    conv: nn::Conv2D,
    kernel: i64,
    stride: i64,
}

impl SameConv {
    fn new(p: nn::Path, cin: i64, cout: i64, kernel: i64, stride: i64, groups: i64) -> Self {
        let cfg = nn::ConvConfig { stride, groups, bias: false, ..Default::default() };
        SameConv { conv: nn::conv2d(p, cin, cout, kernel, cfg), kernel, stride }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let pad = |n: i64| {
            let out = (n + self.stride - 1) / self.stride;
            ((out - 1) * self.stride + self.kernel - n).max(0)
        };
        let (ph, pw) = (pad(size[2]), pad(size[3]));
        if ph == 0 && pw == 0 {
            x.apply(&self.conv)
        } else {
            x.constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2]).apply(&self.conv)
        }
    }
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    // efficientnet-pytorch: momentum 1 - 0.99, eps 1e-3 (the TF values).
    nn::batch_norm2d(p, c, nn::BatchNormConfig { eps: 1e-3, momentum: 0.01, ..Default::default() })
}

struct MbConv {
    expand: Option<(SameConv, nn::BatchNorm)>,
    depthwise: SameConv,
    bn1: nn::BatchNorm,
    project: SameConv,
    bn2: nn::BatchNorm,
    skip: bool,
}

impl MbConv {
    fn new(p: &nn::Path, st: &Stage, cin: i64, stride: i64) -> Self {
        let mid = cin * st.expand;
        let expand =
            (st.expand != 1).then(|| (SameConv::new(p / "_expand_conv", cin, mid, 1, 1, 1), bn(p / "_bn0", mid)));
        MbConv {
            expand,
            depthwise: SameConv::new(p / "_depthwise_conv", mid, mid, st.kernel, stride, mid),
            bn1: bn(p / "_bn1", mid),
            project: SameConv::new(p / "_project_conv", mid, st.cout, 1, 1, 1),
            bn2: bn(p / "_bn2", st.cout),
            skip: stride == 1 && cin == st.cout,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        if let Some((conv, norm)) = &self.expand {
            y = conv.forward(&y).apply_t(norm, train).relu6();
        }
        y = self.depthwise.forward(&y).apply_t(&self.bn1, train).relu6();
        y = self.project.forward(&y).apply_t(&self.bn2, train);
        // Drop-connect (stochastic depth) of the original is not applied in training mode.
        if self.skip { y + x } else { y }
    }
}

pub struct EfficientNetLite {
    stem: SameConv,
    bn0: nn::BatchNorm,
    blocks: Vec<MbConv>,
    head: SameConv,
    bn1: nn::BatchNorm,
    fc: nn::Linear,
    dropout: f64,
    channels: i64,
}

impl EfficientNetLite {
    pub fn new(p: &nn::Path, cfg: Config, num_classes: i64) -> Self {
        let bp = p / "_blocks";
        let mut blocks = Vec::new();
        for st in &cfg.stages {
            for r in 0..st.repeats {
                let (cin, stride) = if r == 0 { (st.cin, st.stride) } else { (st.cout, 1) };
                blocks.push(MbConv::new(&(&bp / blocks.len().to_string()), st, cin, stride));
            }
        }
        let last = cfg.stages.last().map(|s| s.cout).unwrap_or(cfg.stem);
        EfficientNetLite {
            stem: SameConv::new(p / "_conv_stem", 3, cfg.stem, 3, 2, 1),
            bn0: bn(p / "_bn0", cfg.stem),
            blocks,
            head: SameConv::new(p / "_conv_head", last, cfg.head, 1, 1, 1),
            bn1: bn(p / "_bn1", cfg.head),
            fc: nn::linear(p / "_fc", cfg.head, num_classes, Default::default()),
            dropout: cfg.dropout,
            channels: cfg.head,
        }
    }
}

impl Backbone for EfficientNetLite {
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem.forward(x).apply_t(&self.bn0, train).relu6();
        for b in &self.blocks {
            y = b.forward_t(&y, train);
        }
        self.head.forward(&y).apply_t(&self.bn1, train).relu6()
    }

    fn head_t(&self, a: &Tensor, train: bool) -> Tensor {
        a.adaptive_avg_pool2d([1, 1]).flatten(1, -1).dropout(self.dropout, train).apply(&self.fc)
    }

    fn target_channels(&self) -> i64 {
        self.channels
    }

    fn layers(&self) -> Vec<Layer> {
        let mut out = vec![Layer::of(&["_conv_stem", "_bn0"])];
        out.extend((0..self.blocks.len()).map(|i| Layer::at(format!("_blocks.{i}"))));
        out.push(Layer::of(&["_conv_head", "_bn1"]));
        out.push(Layer::at("_fc"));
        out
    }
}
