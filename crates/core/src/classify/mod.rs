//! Classifiers: text in, scored categories out.
//!
//! Two signals, one decision ([`CategoryClassifier`]):
//! - [`rules`](RulesClassifier): whole-word keywords and regex patterns, 1 point each;
//! - [`semantic`](Semantic): the similarity by meaning of the text to each category's examples and
//!   keywords, with a static-embedding model ([`embedding`]), when the routing config names one.
//!
//! The routing decision only needs the [`Classifier`] trait.
//!
//! **The combined decision** (with a model; without one it is exactly the rules' decision):
//! - a category is *eligible* when its rule points reach its `min_score` (and are above 0), or
//!   its similarity reaches its `min_similarity`;
//! - its *combined score* is `similarity + rule_weight * points / max(1, highest points of any
//!   category)` (a category without a prototype counts similarity 0);
//! - the eligible category with the highest combined score wins; a tie goes to the category listed
//!   first; no eligible category: no winner (the default model).
//!
//! With the default `rule_weight` of 0.1 a rule hit decides close calls but not clear evidence of
//! meaning; a `rule_weight` of 2 or more makes any rule hit outrank any similarity (rules first,
//! then meaning).

pub mod embedding;
mod rules;
mod semantic;

use std::sync::Arc;

pub use embedding::{EmbeddingModel, Layout, MAX_EMBED_BYTES, ModelError};
pub use rules::{RuleCategory, RulesClassifier, RulesError};
pub use semantic::{
    CategoryTexts, ExampleWithoutMeaning, NEAREST_POINTS, NEAREST_WEIGHT, Semantic,
};

/// The outcome of classifying one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// Index into the classifier's categories of the winner, if any category is eligible.
    pub winner: Option<usize>,
    /// Rule points per category, in configuration order (for explain output and metrics).
    pub scores: Vec<u32>,
    /// Similarity per category (`None`: no prototype, or the text has no embedding); empty when
    /// no embedding model is configured.
    pub similarities: Vec<Option<f32>>,
    /// Combined score per category; empty when no embedding model is configured.
    pub combined: Vec<f32>,
}

/// Anything that can score a text against the configured categories.
pub trait Classifier: Send + Sync {
    /// Scores `text`; must be deterministic for a given configuration and text.
    fn classify(&self, text: &str) -> Classification;
}

/// The routing table's classifier: the rules, and similarity by meaning when a model is configured.
#[derive(Debug)]
pub struct CategoryClassifier {
    rules: RulesClassifier,
    semantic: Option<Semantic>,
    rule_weight: f32,
    /// Each category's `min_score`, in category order (for [`combine`]).
    min_scores: Vec<u32>,
}

impl CategoryClassifier {
    /// `semantic` must cover the same categories as `rules`, in the same order.
    pub fn new(rules: RulesClassifier, semantic: Option<Semantic>, rule_weight: f32) -> Self {
        let min_scores = rules.categories().iter().map(|c| c.min_score).collect();
        CategoryClassifier {
            rules,
            semantic,
            rule_weight,
            min_scores,
        }
    }

    /// The categories, in priority order.
    pub fn categories(&self) -> &[RuleCategory] {
        self.rules.categories()
    }

    /// The similarity side, when a model is configured.
    pub fn semantic(&self) -> Option<&Semantic> {
        self.semantic.as_ref()
    }

    /// The embedding model, when one is configured.
    pub fn model(&self) -> Option<&Arc<EmbeddingModel>> {
        self.semantic.as_ref().map(Semantic::model)
    }

    /// The weight of normalised rule points in the combined score.
    #[cfg(test)]
    pub fn rule_weight(&self) -> f32 {
        self.rule_weight
    }
}

impl Classifier for CategoryClassifier {
    fn classify(&self, text: &str) -> Classification {
        let rules = self.rules.classify(text);
        let Some(semantic) = &self.semantic else {
            return rules;
        };
        let similarities = semantic.similarities(text);
        let (winner, combined) = combine(
            &rules.scores,
            &self.min_scores,
            &similarities,
            semantic.thresholds(),
            self.rule_weight,
        );
        Classification {
            winner,
            scores: rules.scores,
            similarities,
            combined,
        }
    }
}

/// The combined decision (module docs), on plain numbers: the winner and each combined score.
fn combine(
    points: &[u32],
    min_score: &[u32],
    similarity: &[Option<f32>],
    min_similarity: &[f32],
    rule_weight: f32,
) -> (Option<usize>, Vec<f32>) {
    let highest = points.iter().copied().max().unwrap_or(0).max(1) as f32;
    let combined: Vec<f32> = points
        .iter()
        .zip(similarity)
        .map(|(&p, s)| s.unwrap_or(0.0) + rule_weight * (p as f32 / highest))
        .collect();
    let mut winner: Option<usize> = None;
    for (i, &score) in combined.iter().enumerate() {
        let by_rules = points[i] > 0 && points[i] >= min_score[i];
        let by_meaning = similarity[i].is_some_and(|s| s >= min_similarity[i]);
        if (by_rules || by_meaning) && winner.is_none_or(|w| score > combined[w]) {
            winner = Some(i);
        }
    }
    (winner, combined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_combined_decision_by_hand() {
        let points = [0, 3, 1, 0];
        let min_score = [1, 1, 2, 1];
        let min_similarity = [0.15; 4];
        // Highest points 3: rule terms 0, 0.1, 0.1/3, 0.
        let sim = [Some(0.30), Some(0.18), Some(0.40), None];
        let (winner, combined) = combine(&points, &min_score, &sim, &min_similarity, 0.1);
        assert_eq!(
            combined,
            vec![0.30, 0.18 + 0.1, 0.40 + 0.1 * (1.0 / 3.0), 0.0]
        );
        assert_eq!(winner, Some(2), "0.4333 beats 0.30 and 0.28");
        // Below every threshold and without enough points: nothing is eligible.
        let low = [Some(0.10), Some(0.12), Some(0.14), None];
        let (winner, _) = combine(&[0, 0, 1, 0], &min_score, &low, &min_similarity, 0.1);
        assert_eq!(winner, None, "1 point is under category 2's min_score of 2");
        // Rules alone still make a category eligible, at a low combined score.
        let (winner, combined) = combine(&[0, 2, 0, 0], &min_score, &low, &min_similarity, 0.1);
        assert_eq!((winner, combined[1]), (Some(1), 0.12 + 0.1));
        // A tie goes to the category listed first.
        let tie = [Some(0.2), Some(0.2), None, None];
        assert_eq!(
            combine(&[0; 4], &min_score, &tie, &min_similarity, 0.1).0,
            Some(0)
        );
        // Rules first: with a weight of 2, any rule hit outranks any similarity.
        let strong = [Some(0.95), Some(0.0), None, None];
        let (winner, _) = combine(&[0, 1, 0, 0], &min_score, &strong, &min_similarity, 2.0);
        assert_eq!(winner, Some(1));
    }

    #[test]
    fn without_similarities_the_rules_decide_as_before() {
        let points = [2, 5, 5, 0];
        let min_score = [1, 1, 1, 1];
        let none = [None; 4];
        let (winner, _) = combine(&points, &min_score, &none, &[0.15; 4], 0.1);
        assert_eq!(winner, Some(1), "highest points, first on a tie");
    }
}
