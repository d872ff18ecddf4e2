//! The pure tensor steps after the map: the binary mask and the composition of Eq. 5.

use tch::{Kind, Tensor};

/// Where the threshold of S = [map >= threshold] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    /// The mean of each image's own map (paper Sec. 5, step 2).
    ImageMean,
    /// One mean over the maps of the whole batch, as the official fine-tuning code takes it.
    /// Maps that came out constant (or NaN) are left out of it: their zeros carry no ordering,
    /// and one image's failed map should not move the threshold of the others.
    BatchMean,
}

impl Threshold {
    pub const ALL: [Threshold; 2] = [Threshold::ImageMean, Threshold::BatchMean];
    pub fn name(self) -> &'static str {
        match self {
            Threshold::ImageMean => "image",
            Threshold::BatchMean => "batch",
        }
    }
}
crate::choice!(Threshold);

impl std::str::FromStr for Threshold {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "image" | "image-mean" => Ok(Threshold::ImageMean),
            "batch" | "batch-mean" => Ok(Threshold::BatchMean),
            _ => anyhow::bail!("unknown threshold rule '{s}' (expected image or batch)"),
        }
    }
}

/// S for m maps (m x 1 x H x W, each in [0, 1]) as 0/1 floats; `constant` (m bools) marks maps
/// without an ordering, whose S is all ones so that their image passes through unchanged.
pub fn binarize(maps: &Tensor, constant: &Tensor, rule: Threshold) -> Tensor {
    let m = maps.size()[0];
    let live = constant.logical_not().view([m, 1, 1, 1]);
    let threshold = match rule {
        Threshold::ImageMean => maps.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float),
        Threshold::BatchMean => {
            let per_image = maps.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
            let count = live.sum(Kind::Float).clamp_min(1.0);
            ((per_image * &live).sum(Kind::Float) / count).view([1, 1, 1, 1])
        }
    };
    maps.ge_tensor(&threshold).logical_or(&live.logical_not()).to_kind(Kind::Float)
}

/// Eq. 5 with a binary S: x * S + blurred * (1 - S). With S in {0, 1} that is a choice per
/// pixel, made with `where` so that kept pixels are the input and the others the blur bit for
/// bit (a product would turn an infinite blur value times 0 into NaN).
pub fn compose(x: &Tensor, blurred: &Tensor, masks: &Tensor) -> Tensor {
    x.where_self(&masks.gt(0.5), blurred)
}
