//! The 1000 ImageNet-1k class names, in torchvision's order.

const NAMES: &str = include_str!("imagenet_classes.txt");

/// The name of class `i` of a model with `classes` outputs: ImageNet's for a 1000-way head,
/// `class i` for any other (a fine-tuned head's indices are not ImageNet's).
pub fn name_for(i: i64, classes: i64) -> String {
    if classes == 1000 { class_name(i) } else { format!("class {i}") }
}

/// The name of class `i`, or `class i` outside ImageNet-1k.
pub fn class_name(i: i64) -> String {
    usize::try_from(i)
        .ok()
        .and_then(|i| NAMES.lines().nth(i))
        .map(str::to_string)
        .unwrap_or_else(|| format!("class {i}"))
}
