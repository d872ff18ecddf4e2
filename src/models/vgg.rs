//! VGG16/19 in torchvision's layout (`features.N`, `classifier.N`).
//! Target layer: the ReLU after the last conv (`features.29` for VGG16, `features.35` for VGG19).

use tch::{Tensor, nn};

use super::{Backbone, Layer};

#[derive(Clone, Debug)]
pub struct Config {
    /// Conv widths per stage; a max-pool closes each stage.
    pub stages: Vec<Vec<i64>>,
}

impl Config {
    pub fn vgg16() -> Self {
        Config { stages: vec![vec![64; 2], vec![128; 2], vec![256; 3], vec![512; 3], vec![512; 3]] }
    }
    pub fn vgg19() -> Self {
        Config { stages: vec![vec![64; 2], vec![128; 2], vec![256; 4], vec![512; 4], vec![512; 4]] }
    }
}

pub struct Vgg {
    /// Convs with a flag: a max-pool precedes this conv.
    convs: Vec<(bool, nn::Conv2D)>,
    fc: [nn::Linear; 3],
}

impl Vgg {
    pub fn new(p: &nn::Path, cfg: Config, num_classes: i64) -> Self {
        let f = p / "features";
        let c = p / "classifier";
        let mut convs = Vec::new();
        let mut index = 0;
        let mut cin = 3;
        for (s, stage) in cfg.stages.iter().enumerate() {
            for (j, &cout) in stage.iter().enumerate() {
                let cfgc = nn::ConvConfig { padding: 1, ..Default::default() };
                convs.push((s > 0 && j == 0, nn::conv2d(&f / index.to_string(), cin, cout, 3, cfgc)));
                cin = cout;
                index += 2; // conv, ReLU
            }
            index += 1; // MaxPool
        }
        let fc = [
            nn::linear(&c / "0", 512 * 7 * 7, 4096, Default::default()),
            nn::linear(&c / "3", 4096, 4096, Default::default()),
            nn::linear(&c / "6", 4096, num_classes, Default::default()),
        ];
        Vgg { convs, fc }
    }
}

fn pool(x: &Tensor) -> Tensor {
    x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
}

impl Backbone for Vgg {
    fn features_t(&self, x: &Tensor, _train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for (pool_first, conv) in &self.convs {
            if *pool_first {
                y = pool(&y);
            }
            y = y.apply(conv).relu();
        }
        y
    }

    fn head_t(&self, a: &Tensor, train: bool) -> Tensor {
        let y = pool(a).adaptive_avg_pool2d([7, 7]).flatten(1, -1);
        let y = y.apply(&self.fc[0]).relu().dropout(0.5, train);
        let y = y.apply(&self.fc[1]).relu().dropout(0.5, train);
        y.apply(&self.fc[2])
    }

    fn target_channels(&self) -> i64 {
        512
    }

    fn layers(&self) -> Vec<Layer> {
        let mut out = Vec::new();
        let mut index = 0;
        for (pool_first, _) in &self.convs {
            index += *pool_first as usize; // the MaxPool before this conv
            out.push(Layer::at(format!("features.{index}")));
            index += 2; // conv, ReLU
        }
        out.extend(["classifier.0", "classifier.3", "classifier.6"].map(Layer::at));
        out
    }
}
