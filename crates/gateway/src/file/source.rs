//! The file being read: its text (for the line an error points to), its
//! folder (for the paths it names) and the environment (for the variables
//! it names).

use std::ops::Range;
use std::path::Path;

use crate::config::ConfigError;

pub(super) struct Source<'a> {
    /// The file's path, as errors show it.
    pub(super) shown: String,
    text: &'a str,
    /// What relative paths in the file are relative to.
    pub(super) base: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Source<'a> {
    pub(super) fn new(
        path: &'a Path,
        text: &'a str,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Self {
        Self {
            shown: path.display().to_string(),
            text,
            base: path.parent().unwrap_or(Path::new(".")),
            env,
        }
    }

    /// The file as `T`, or the line and reason `toml` gives.
    pub(super) fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| ConfigError::File {
            path: self.shown.clone(),
            line: e.span().map(|s| line_of(self.text, s.start)),
            reason: e.message().to_owned(),
        })
    }

    /// An error at the line where `span` starts.
    pub(super) fn fail(&self, span: Range<usize>, reason: String) -> ConfigError {
        ConfigError::File {
            path: self.shown.clone(),
            line: Some(line_of(self.text, span.start)),
            reason,
        }
    }

    /// An error at the line of the first `key` in the file, if there is one.
    pub(super) fn fail_at_key(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::File {
            path: self.shown.clone(),
            line: self.text.find(key).map(|at| line_of(self.text, at)),
            reason,
        }
    }

    /// An error about the whole file.
    pub(super) fn fail_file(&self, reason: String) -> ConfigError {
        ConfigError::File {
            path: self.shown.clone(),
            line: None,
            reason,
        }
    }

    /// The value of the environment variable `name`, if it is set and not
    /// empty.
    pub(super) fn env(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
