//! Enumerated settings (an architecture, a threshold rule, a method...) parsed once at the
//! boundary: clap and serde both parse them through the type's own `FromStr`, so a bad value
//! fails at parse time with the type's message, and `--help` lists the choices.

use std::marker::PhantomData;

/// A setting with a fixed list of names; `FromStr` accepts them (and any aliases) and says
/// what was expected.
pub trait Choice: std::str::FromStr<Err = anyhow::Error> + Clone + Send + Sync + 'static {
    /// The canonical names, in the order `--help` lists them.
    fn names() -> Vec<&'static str>;
}

/// A clap value parser for a [`Choice`]: the type's own error on a bad value, its names in `--help`.
pub fn parser<T: Choice>() -> Parser<T> {
    Parser(PhantomData)
}

#[derive(Clone)]
pub struct Parser<T>(PhantomData<T>);

impl<T: Choice> clap::builder::TypedValueParser for Parser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let s = value.to_string_lossy();
        s.parse::<T>().map_err(|e| {
            let arg = arg.map(|a| a.to_string()).unwrap_or_else(|| "...".into());
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("invalid value '{s}' for '{arg}': {e}\n"))
                .with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(T::names().into_iter().map(clap::builder::PossibleValue::new)))
    }
}

/// Display, serde (as the name) and [`Choice`] for an enum with `name(self) -> &'static str`,
/// an `ALL` list and a `FromStr`.
#[macro_export]
macro_rules! choice {
    ($t:ty) => {
        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }
        impl ::serde::Serialize for $t {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
        impl<'de> ::serde::Deserialize<'de> for $t {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let s = <String as ::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(|e: anyhow::Error| <D::Error as ::serde::de::Error>::custom(format!("{e:#}")))
            }
        }
        impl $crate::choice::Choice for $t {
            fn names() -> Vec<&'static str> {
                <$t>::ALL.iter().map(|v| v.name()).collect()
            }
        }
    };
}
