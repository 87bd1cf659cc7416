//! Classifiers: text in, scored categories out.
//!
//! The routing decision only needs the [`Classifier`] trait, so other classifiers (embeddings, an
//! external model) can be added beside the keyword/regex rules without touching `routing`.

mod rules;

pub use rules::{RuleCategory, RulesClassifier, RulesError};

/// The outcome of classifying one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Index into the classifier's categories of the winner, if any category scored.
    pub winner: Option<usize>,
    /// Score per category, in configuration order (for explain output and metrics).
    pub scores: Vec<u32>,
}

/// Anything that can score a text against the configured categories.
pub trait Classifier: Send + Sync {
    /// Scores `text`; must be deterministic for a given configuration and text.
    fn classify(&self, text: &str) -> Classification;
}
