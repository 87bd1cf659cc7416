//! Similarity by meaning: each category's prototype, built from its example utterances and its
//! keywords when the routing config is compiled, and a text's similarity to it.
//!
//! **Prototype** of a category (every vector below is unit length):
//! - `E` = the normalised mean of its examples' embeddings;
//! - `K` = the normalised mean of its keywords' embeddings (each keyword embedded as a text);
//! - `center` = the normalised `E + K` (only one of them when the category lacks the other);
//! - its *points*: every example's and every keyword's own embedding.
//!
//! **Similarity** of a text with embedding `q` to a category:
//! `(cos(q, center) + 0.5 * mean of the 5 highest cos(q, point)) / 1.5` (the mean of all points'
//! cosines when it has fewer than 5). The first term is the category as a whole; the second, how
//! close the text comes to the few examples or keywords nearest to it: a category's sub-topics
//! (physics, chemistry and biology in `science`), which the blurred mean misses, and a text that
//! closely matches one example. Measured on the evaluation set (BENCHMARKS.md), the keywords'
//! meaning added about 0.10 of accuracy over the examples alone, and the nearest-points term
//! about 0.02 more.
//!
//! A similarity is a cosine-scaled number in [-1, 1]; how high a related text scores depends on
//! the model (the wordllama table gives about half of what potion models give), hence a
//! configurable threshold.

use std::sync::Arc;

use super::embedding::{EmbeddingModel, dots, normalize};

/// Weight of the nearest-points term against the prototype's cosine.
pub const NEAREST_WEIGHT: f32 = 0.5;
/// How many of a category's points (examples and keywords) count as its nearest to a text.
pub const NEAREST_POINTS: usize = 5;

/// What one category gives the semantic side.
#[derive(Debug, Clone, Copy)]
pub struct CategoryTexts<'a> {
    pub examples: &'a [String],
    pub keywords: &'a [String],
    /// The similarity at which the category becomes eligible.
    pub min_similarity: f32,
}

/// Where one category's prototype is in [`Semantic`]'s matrix: its center's row, then its points'
/// rows (unit embeddings of its examples and keywords).
#[derive(Debug, Clone)]
struct Prototype {
    center: usize,
    points: std::ops::Range<usize>,
}

/// An example that has no embedding (no token the model knows): `(category, example)` indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExampleWithoutMeaning {
    pub category: usize,
    pub example: usize,
}

/// The categories' prototypes and thresholds over a shared model.
#[derive(Debug)]
pub struct Semantic {
    model: Arc<EmbeddingModel>,
    /// Every prototype's vectors, one row each (`dim` values): one pass of dot products per text.
    matrix: Vec<f32>,
    rows: usize,
    prototypes: Vec<Option<Prototype>>,
    min_similarity: Vec<f32>,
}

impl Semantic {
    /// Embeds every category's examples and keywords with `model`. Every example must have an
    /// embedding (each that has none is reported); a keyword without one only adds nothing.
    pub fn build(
        model: Arc<EmbeddingModel>,
        categories: &[CategoryTexts<'_>],
    ) -> Result<Self, Vec<ExampleWithoutMeaning>> {
        let dim = model.dim();
        let mut problems = Vec::new();
        let mut prototypes = Vec::with_capacity(categories.len());
        let mut matrix: Vec<f32> = Vec::new();
        for (c, texts) in categories.iter().enumerate() {
            let mut points = Vec::new();
            let mut examples = vec![0.0f32; dim];
            let mut any_example = false;
            for (e, example) in texts.examples.iter().enumerate() {
                match model.embed(example) {
                    Some(v) => {
                        add(&mut examples, &v);
                        points.extend_from_slice(&v);
                        any_example = true;
                    }
                    None => problems.push(ExampleWithoutMeaning {
                        category: c,
                        example: e,
                    }),
                }
            }
            let mut keyword_sum = vec![0.0f32; dim];
            let mut any_keyword = false;
            for keyword in texts.keywords {
                if let Some(v) = model.embed(keyword) {
                    add(&mut keyword_sum, &v);
                    points.extend_from_slice(&v);
                    any_keyword = true;
                }
            }
            let examples = (any_example && normalize(&mut examples)).then_some(examples);
            let keyword_mean = (any_keyword && normalize(&mut keyword_sum)).then_some(keyword_sum);
            let center = match (examples, keyword_mean) {
                (Some(mut e), Some(k)) => {
                    add(&mut e, &k);
                    normalize(&mut e).then_some(e)
                }
                (one, other) => one.or(other),
            };
            prototypes.push(center.map(|center| {
                let first = matrix.len() / dim;
                matrix.extend_from_slice(&center);
                matrix.extend_from_slice(&points);
                Prototype {
                    center: first,
                    points: first + 1..matrix.len() / dim,
                }
            }));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Semantic {
            rows: matrix.len() / dim,
            model,
            matrix,
            prototypes,
            min_similarity: categories.iter().map(|c| c.min_similarity).collect(),
        })
    }

    /// Each category's similarity to `text` (`None` for a category without a prototype, and for
    /// every category when the text has no embedding).
    pub fn similarities(&self, text: &str) -> Vec<Option<f32>> {
        let Some(q) = self.model.embed(text) else {
            return vec![None; self.prototypes.len()];
        };
        let mut cosines = Vec::with_capacity(self.rows);
        dots(&q, &self.matrix, &mut cosines);
        self.prototypes
            .iter()
            .map(|p| {
                let p = p.as_ref()?;
                Some(similarity(
                    *cosines.get(p.center)?,
                    cosines.get(p.points.clone())?,
                ))
            })
            .collect()
    }

    /// The similarity at which category `index` becomes eligible.
    pub fn min_similarity(&self, index: usize) -> Option<f32> {
        self.min_similarity.get(index).copied()
    }

    /// The thresholds, in category order.
    pub(super) fn thresholds(&self) -> &[f32] {
        &self.min_similarity
    }

    /// Whether category `index` has a prototype (examples or keywords with meaning).
    #[cfg(test)]
    pub fn has_prototype(&self, index: usize) -> bool {
        self.prototypes.get(index).is_some_and(Option::is_some)
    }

    /// The model the prototypes were built with.
    pub fn model(&self) -> &Arc<EmbeddingModel> {
        &self.model
    }
}

/// The similarity from the cosine to the center and the cosines to every point.
fn similarity(center: f32, points: &[f32]) -> f32 {
    if points.is_empty() {
        return center;
    }
    // The NEAREST_POINTS highest cosines, sorted high to low.
    let mut best = [f32::NEG_INFINITY; NEAREST_POINTS];
    for &s in points {
        if s > best[NEAREST_POINTS - 1] {
            let mut i = NEAREST_POINTS - 1;
            while i > 0 && best[i - 1] < s {
                best[i] = best[i - 1];
                i -= 1;
            }
            best[i] = s;
        }
    }
    let (sum, kept) = best
        .into_iter()
        .filter(|s| s.is_finite())
        .fold((0.0, 0u16), |(sum, n), s| (sum + s, n + 1));
    let nearest = sum / f32::from(kept);
    (center + NEAREST_WEIGHT * nearest) / (1.0 + NEAREST_WEIGHT)
}

fn add(acc: &mut [f32], v: &[f32]) {
    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::embedding::tests::tiny_model;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prototypes_and_similarities_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        // Unit-ish axes in 2-D, so every number below can be worked out on paper.
        let model = Arc::new(tiny_model(
            dir.path(),
            &["[UNK]", "x", "y", "nx", "xy"],
            &[
                &[0.0, 0.0],
                &[1.0, 0.0],
                &[0.0, 1.0],
                &[-1.0, 0.0],
                &[3.0, 4.0],
            ],
        ));
        let examples = strings(&["x", "x x"]);
        let keywords = strings(&["y"]);
        let none: Vec<String> = vec![];
        let only_keywords = strings(&["x", "y", "nx", "xy"]);
        let texts = [
            // E = (1, 0), K = (0, 1): center = (1, 1)/sqrt(2).
            CategoryTexts {
                examples: &examples,
                keywords: &keywords,
                min_similarity: 0.5,
            },
            // Only keywords: center = unit((1,0) + (0,1) + (-1,0) + (0.6,0.8)) = unit(0.6, 1.8).
            CategoryTexts {
                examples: &none,
                keywords: &only_keywords,
                min_similarity: 0.5,
            },
            // Nothing with meaning: no prototype.
            CategoryTexts {
                examples: &none,
                keywords: &none,
                min_similarity: 0.5,
            },
        ];
        let s = Semantic::build(Arc::clone(&model), &texts).unwrap();
        assert!(s.has_prototype(0) && s.has_prototype(1) && !s.has_prototype(2));
        let got = s.similarities("x");
        let r = std::f32::consts::FRAC_1_SQRT_2;
        // cat 0: cos(q=(1,0), center) = 1/sqrt(2); its points "x", "x x", "y" have cosines 1, 1,
        // 0 (fewer than 5: all count), mean 2/3.
        let cat0 = (r + NEAREST_WEIGHT * (2.0 / 3.0)) / (1.0 + NEAREST_WEIGHT);
        // cat 1: center cos = 0.6 / sqrt(0.36 + 3.24) = 0.6 / sqrt(3.6); the four keyword cosines
        // are 1, 0, -1, 0.6: mean 0.15.
        let center1 = 0.6 / 3.6f32.sqrt();
        let cat1 = (center1 + NEAREST_WEIGHT * 0.15) / (1.0 + NEAREST_WEIGHT);
        assert!((got[0].unwrap() - cat0).abs() < 1e-6, "{got:?} vs {cat0}");
        assert!((got[1].unwrap() - cat1).abs() < 1e-6, "{got:?} vs {cat1}");
        assert_eq!(got[2], None);
        assert_eq!(s.similarities("unknown words"), vec![None, None, None]);
    }

    #[test]
    fn only_the_nearest_points_count() {
        let dir = tempfile::tempdir().unwrap();
        let words = ["[UNK]", "a", "b", "c", "d", "e", "f", "g"];
        // a..e point at (1, 0), f and g at (0, 1).
        let rows: [&[f32]; 8] = [
            &[0.0, 0.0],
            &[1.0, 0.0],
            &[1.0, 0.0],
            &[1.0, 0.0],
            &[1.0, 0.0],
            &[1.0, 0.0],
            &[0.0, 1.0],
            &[0.0, 1.0],
        ];
        let model = Arc::new(tiny_model(dir.path(), &words, &rows));
        let keywords = strings(&["f", "a", "g", "b", "c", "d", "e"]);
        let none: Vec<String> = vec![];
        let s = Semantic::build(
            model,
            &[CategoryTexts {
                examples: &none,
                keywords: &keywords,
                min_similarity: 0.1,
            }],
        )
        .unwrap();
        // center = unit(5, 2); q = (1, 0): cos 5/sqrt(29). The 5 nearest are a..e, cos 1 each.
        let expected = (5.0 / 29f32.sqrt() + NEAREST_WEIGHT * 1.0) / (1.0 + NEAREST_WEIGHT);
        assert!((s.similarities("a")[0].unwrap() - expected).abs() < 1e-6);
    }

    #[test]
    fn examples_without_meaning_are_reported_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let model = Arc::new(tiny_model(dir.path(), &["[UNK]", "x"], &[&[0.0], &[1.0]]));
        let examples = strings(&["x", "nothing known", "x"]);
        let texts = [CategoryTexts {
            examples: &examples,
            keywords: &[],
            min_similarity: 0.1,
        }];
        assert_eq!(
            Semantic::build(model, &texts).unwrap_err(),
            vec![ExampleWithoutMeaning {
                category: 0,
                example: 1
            }]
        );
    }
}
