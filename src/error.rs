//! Errors a caller may want to tell apart. Messages name the value at fault; the caller says
//! where it came from (a flag, a config key, a file).

/// Errors about the classes asked of a model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClassError {
    #[error("{given} classes given for {images} images")]
    Count { given: usize, images: i64 },
    #[error("class {class} is out of range: the model has {classes} classes (0..{})", classes - 1)]
    OutOfRange { class: i64, classes: i64 },
}
