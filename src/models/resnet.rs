//! ResNet-18/34/50/101/152 in torchvision's layout; variable names equal the state dict's.
//! Target layer: the output of `layer4`.

use tch::{Tensor, nn};

use super::{Backbone, Layer};

#[derive(Clone, Debug)]
pub struct Config {
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Bottleneck (expansion 4) rather than basic blocks (expansion 1).
    pub bottleneck: bool,
}

impl Config {
    pub fn resnet18() -> Self {
        Config { layers: [2, 2, 2, 2], bottleneck: false }
    }
    pub fn resnet34() -> Self {
        Config { layers: [3, 4, 6, 3], bottleneck: false }
    }
    pub fn resnet50() -> Self {
        Config { layers: [3, 4, 6, 3], bottleneck: true }
    }
    pub fn resnet101() -> Self {
        Config { layers: [3, 4, 23, 3], bottleneck: true }
    }
    pub fn resnet152() -> Self {
        Config { layers: [3, 8, 36, 3], bottleneck: true }
    }
    fn expansion(&self) -> i64 {
        if self.bottleneck { 4 } else { 1 }
    }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig { stride, padding, bias: false, ..Default::default() };
    nn::conv2d(p, cin, cout, k, cfg)
}

struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBn {
    fn new(p: &nn::Path, conv_name: &str, bn_name: &str, cin: i64, cout: i64, k: i64, stride: i64) -> Self {
        ConvBn {
            conv: conv(p / conv_name, cin, cout, k, stride, k / 2),
            bn: nn::batch_norm2d(p / bn_name, cout, Default::default()),
        }
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.conv).apply_t(&self.bn, train)
    }
}

struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(p: &nn::Path, cin: i64, planes: i64, stride: i64, cfg: &Config) -> Self {
        let cout = planes * cfg.expansion();
        // torchvision (v1.5) puts the stride on the 3x3 conv of a bottleneck.
        let convs = if cfg.bottleneck {
            vec![
                ConvBn::new(p, "conv1", "bn1", cin, planes, 1, 1),
                ConvBn::new(p, "conv2", "bn2", planes, planes, 3, stride),
                ConvBn::new(p, "conv3", "bn3", planes, cout, 1, 1),
            ]
        } else {
            vec![
                ConvBn::new(p, "conv1", "bn1", cin, planes, 3, stride),
                ConvBn::new(p, "conv2", "bn2", planes, planes, 3, 1),
            ]
        };
        let downsample =
            (stride != 1 || cin != cout).then(|| ConvBn::new(&(p / "downsample"), "0", "1", cin, cout, 1, stride));
        Block { convs, downsample }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut y = x.shallow_clone();
        for (i, cb) in self.convs.iter().enumerate() {
            y = cb.forward_t(&y, train);
            if i != last {
                y = y.relu();
            }
        }
        let skip = match &self.downsample {
            Some(d) => d.forward_t(x, train),
            None => x.shallow_clone(),
        };
        (y + skip).relu()
    }
}

pub struct ResNet {
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
    fc: nn::Linear,
    channels: i64,
}

impl ResNet {
    pub fn new(p: &nn::Path, cfg: Config, num_classes: i64) -> Self {
        let stem = ConvBn::new(p, "conv1", "bn1", 3, 64, 7, 2);
        let mut cin = 64;
        let mut stages = Vec::new();
        for (i, &n) in cfg.layers.iter().enumerate() {
            let planes = 64 << i;
            let sp = p / format!("layer{}", i + 1);
            let stage: Vec<Block> = (0..n)
                .map(|b| {
                    let stride = if i > 0 && b == 0 { 2 } else { 1 };
                    let blk = Block::new(&(&sp / b.to_string()), cin, planes, stride, &cfg);
                    cin = planes * cfg.expansion();
                    blk
                })
                .collect();
            stages.push(stage);
        }
        let fc = nn::linear(p / "fc", cin, num_classes, Default::default());
        ResNet { stem, stages, fc, channels: cin }
    }
}

impl Backbone for ResNet {
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem.forward_t(x, train).relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            for blk in stage {
                y = blk.forward_t(&y, train);
            }
        }
        y
    }

    fn head_t(&self, a: &Tensor, _train: bool) -> Tensor {
        a.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }

    fn target_channels(&self) -> i64 {
        self.channels
    }

    fn layers(&self) -> Vec<Layer> {
        let mut out = vec![Layer::of(&["conv1", "bn1"])];
        for (i, stage) in self.stages.iter().enumerate() {
            out.extend((0..stage.len()).map(|b| Layer::at(format!("layer{}.{b}", i + 1))));
        }
        out.push(Layer::at("fc"));
        out
    }
}
