//! Keyword and regex rules, the default classifier: deterministic, explainable, no model files.
//!
//! Scoring: each whole-word, case-insensitive occurrence of a category keyword is 1 point; each of
//! the category's regex patterns that matches is 1 point. The highest score at or above the
//! category's `min_score` wins; a tie goes to the category listed first in the routing YAML, so the
//! YAML order is the priority order. All keywords of all categories go into one Aho-Corasick
//! automaton and all patterns into one `RegexSet`, so the cost is one pass over the text each,
//! independent of the number of categories.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexSet, bytes};

use super::{Classification, Classifier};

/// One category as the rules classifier needs it.
#[derive(Debug, Clone, Default)]
pub struct RuleCategory {
    pub name: String,
    pub keywords: Vec<String>,
    pub patterns: Vec<String>,
    pub min_score: u32,
}

/// Why a rule set cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A pattern is not a valid regex: `category` and `pattern` are indexes into the categories
    /// and that category's patterns, for error messages that name the field.
    #[error("category `{name}`: invalid regex pattern {source_text:?}: {source}")]
    Regex {
        category: usize,
        pattern: usize,
        name: String,
        source_text: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("keyword automaton: {0}")]
    Keywords(#[from] aho_corasick::BuildError),
    #[error("regex set: {0}")]
    RegexSet(#[from] Box<regex::Error>),
}

/// The compiled keyword/regex classifier.
#[derive(Debug)]
pub struct RulesClassifier {
    categories: Vec<RuleCategory>,
    keywords: Option<AhoCorasick>,
    /// Category index of each keyword pattern id.
    keyword_owner: Vec<usize>,
    /// Keywords with non-ASCII letters need Unicode case folding of the text (slower path).
    fold_unicode: bool,
    patterns: Option<Patterns>,
    /// Category index of each regex pattern id.
    pattern_owner: Vec<usize>,
}

impl RulesClassifier {
    /// Compiles the rules; an invalid regex fails the build, and every invalid one is reported
    /// (this is the only place patterns are compiled: validating a config is compiling it).
    pub fn new(categories: Vec<RuleCategory>) -> Result<Self, Vec<RulesError>> {
        let fold_unicode = categories
            .iter()
            .flat_map(|c| &c.keywords)
            .any(|k| !k.is_ascii());
        let mut words = Vec::new();
        let mut keyword_owner = Vec::new();
        let mut sources = Vec::new();
        let mut regexes = Vec::new();
        let mut pattern_owner = Vec::new();
        let mut errors = Vec::new();
        for (idx, category) in categories.iter().enumerate() {
            for keyword in category.keywords.iter().filter(|k| !k.trim().is_empty()) {
                words.push(if fold_unicode {
                    keyword.trim().to_lowercase()
                } else {
                    keyword.trim().to_owned()
                });
                keyword_owner.push(idx);
            }
            for (j, pattern) in category.patterns.iter().enumerate() {
                // Compiled alone first, so an error names the category and pattern.
                match Regex::new(pattern) {
                    Ok(regex) => regexes.push(regex),
                    Err(source) => {
                        errors.push(RulesError::Regex {
                            category: idx,
                            pattern: j,
                            name: category.name.clone(),
                            source_text: pattern.clone(),
                            source: Box::new(source),
                        });
                        continue;
                    }
                }
                sources.push(pattern.clone());
                pattern_owner.push(idx);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let keywords = if words.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(!fold_unicode)
                    .match_kind(MatchKind::Standard)
                    .build(&words)
                    .map_err(|e| vec![e.into()])?,
            )
        };
        let patterns = if sources.is_empty() {
            None
        } else {
            Some(Patterns::new(&sources, regexes).map_err(|e| vec![e])?)
        };
        Ok(RulesClassifier {
            categories,
            keywords,
            keyword_owner,
            fold_unicode,
            patterns,
            pattern_owner,
        })
    }

    /// The categories, in priority order.
    pub fn categories(&self) -> &[RuleCategory] {
        &self.categories
    }
}

impl Classifier for RulesClassifier {
    fn classify(&self, text: &str) -> Classification {
        let mut scores = vec![0u32; self.categories.len()];
        if let Some(ac) = &self.keywords {
            let folded;
            let haystack = if self.fold_unicode {
                folded = text.to_lowercase();
                folded.as_str()
            } else {
                text
            };
            // Overlapping search so a keyword inside a longer non-word match still counts.
            for m in ac.find_overlapping_iter(haystack) {
                if is_whole_word(haystack, m.start(), m.end()) {
                    let owner = self.keyword_owner[m.pattern().as_usize()];
                    scores[owner] = scores[owner].saturating_add(1);
                }
            }
        }
        if let Some(patterns) = &self.patterns {
            patterns.for_each_match(text, |id| {
                let owner = self.pattern_owner[id];
                scores[owner] = scores[owner].saturating_add(1);
            });
        }
        let mut winner: Option<usize> = None;
        for (idx, &score) in scores.iter().enumerate() {
            let eligible = score > 0 && score >= self.categories[idx].min_score;
            // Strictly greater: on a tie the earlier (higher-priority) category stays.
            if eligible && winner.is_none_or(|w| score > scores[w]) {
                winner = Some(idx);
            }
        }
        Classification {
            winner,
            scores,
            similarities: Vec::new(),
            combined: Vec::new(),
        }
    }
}

/// The regex patterns, asked which of them match a text.
///
/// Two costs are avoided. A set's "which patterns matched" search runs on the regex crate's slowest
/// engine (its PikeVM) whenever a pattern uses Unicode `\b` or `\w`, so the set only answers "any?"
/// and the patterns are then asked one by one. And Unicode `\b`/`\w` keep even single patterns off
/// the lazy DFA, so for an ASCII text (most prompts) the patterns run compiled without Unicode
/// classes: on ASCII text `\b`, `\w`, `\s`, `\d`, `.`, classes and `(?i)` match exactly as their
/// Unicode forms do (no non-ASCII character is there to tell them apart). Measured with 50 such
/// patterns on 1 KiB: 700 µs as one set, 165 µs one by one, 3.6 µs without Unicode classes.
#[derive(Debug)]
struct Patterns {
    set: RegexSet,
    each: Vec<Regex>,
    /// The ASCII forms; `None` when some pattern needs Unicode (e.g. `\p{Greek}`).
    ascii: Option<(bytes::RegexSet, Vec<bytes::Regex>)>,
}

impl Patterns {
    fn new(sources: &[String], each: Vec<Regex>) -> Result<Self, RulesError> {
        let ascii_one = |p: &String| bytes::RegexBuilder::new(p).unicode(false).build().ok();
        let ascii = sources
            .iter()
            .map(ascii_one)
            .collect::<Option<Vec<_>>>()
            .and_then(|each| {
                let set = bytes::RegexSetBuilder::new(sources)
                    .unicode(false)
                    .build()
                    .ok()?;
                Some((set, each))
            });
        Ok(Patterns {
            set: RegexSet::new(sources).map_err(Box::new)?,
            each,
            ascii,
        })
    }

    /// Calls `f` with the index of every pattern that matches `text`, in pattern order.
    fn for_each_match(&self, text: &str, mut f: impl FnMut(usize)) {
        match &self.ascii {
            Some((set, each)) if text.is_ascii() => {
                let haystack = text.as_bytes();
                if set.is_match(haystack) {
                    (0..each.len())
                        .filter(|&i| each[i].is_match(haystack))
                        .for_each(&mut f);
                }
            }
            _ => {
                if self.set.is_match(text) {
                    (0..self.each.len())
                        .filter(|&i| self.each[i].is_match(text))
                        .for_each(&mut f);
                }
            }
        }
    }
}

/// A match is a whole word when the characters around it are not letters, digits or `_`.
fn is_whole_word(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    !word(before) && !word(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATTERNS: [&str; 9] = [
        r"\bfn\s+\w+\s*\(",
        r"(?i)\bstack\s+trace\b",
        r"\d{3,}",
        r"[^a-z ]{2}",
        r"a.c",
        r"\Bing\b",
        r"^\s*```",
        r"\p{Greek}",
        r"(?i)k\w*n",
    ];

    /// The patterns above without `\p{Greek}` (which has no ASCII form): (with, without) the
    /// ASCII fast path. Compiled once: regex compilation dominates otherwise.
    fn fast_and_slow() -> &'static (Patterns, Patterns) {
        static BOTH: std::sync::LazyLock<(Patterns, Patterns)> = std::sync::LazyLock::new(|| {
            let sources: Vec<String> = PATTERNS
                .iter()
                .filter(|p| !p.contains("Greek"))
                .map(|p| p.to_string())
                .collect();
            let each: Vec<Regex> = sources.iter().map(|p| Regex::new(p).unwrap()).collect();
            let fast = Patterns::new(&sources, each.clone()).unwrap();
            let slow = Patterns {
                ascii: None,
                ..Patterns::new(&sources, each).unwrap()
            };
            (fast, slow)
        });
        &BOTH
    }

    #[test]
    fn a_pattern_needing_unicode_keeps_every_pattern_on_unicode() {
        let sources: Vec<String> = PATTERNS.iter().map(|p| p.to_string()).collect();
        let each = sources.iter().map(|p| Regex::new(p).unwrap()).collect();
        assert!(Patterns::new(&sources, each).unwrap().ascii.is_none());
        assert!(fast_and_slow().0.ascii.is_some());
    }

    proptest::proptest! {
        /// On ASCII texts the ASCII forms find exactly the patterns the Unicode forms find.
        #[test]
        fn ascii_fast_path_agrees_with_unicode(text in "[a-zA-Z0-9 _(){}`\n\t.,-]{0,64}") {
            let (fast, slow) = fast_and_slow();
            let found = |p: &Patterns| {
                let mut v = Vec::new();
                p.for_each_match(&text, |i| v.push(i));
                v
            };
            proptest::prop_assert_eq!(found(fast), found(slow));
        }
    }

    fn cat(name: &str, keywords: &[&str], patterns: &[&str]) -> RuleCategory {
        RuleCategory {
            name: name.into(),
            keywords: keywords.iter().map(|s| s.to_string()).collect(),
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
            min_score: 1,
        }
    }

    fn classifier() -> RulesClassifier {
        RulesClassifier::new(vec![
            cat(
                "coding",
                &["python", "rust", "stack trace"],
                &["```", r"\bdef\s+\w+\("],
            ),
            cat(
                "math",
                &["integral", "prove", "theorem"],
                &[r"\d+\s*[+*/^-]\s*\d+"],
            ),
            cat("legal", &["contract", "liability"], &[]),
        ])
        .unwrap()
    }

    #[test]
    fn keywords_are_case_insensitive_whole_words() {
        let c = classifier();
        let r = c.classify("Write PYTHON, then Rust.");
        assert_eq!((r.winner, r.scores.clone()), (Some(0), vec![2, 0, 0]));
        // Substrings of other words do not count.
        let r = c.classify("pythonic trusty rustacean contracts");
        assert_eq!(r.scores, vec![0, 0, 0]);
        assert_eq!(r.winner, None);
        // Multi-word keywords and punctuation boundaries.
        assert_eq!(c.classify("see the stack trace: (rust)").scores[0], 2);
        assert_eq!(c.classify("my_python_var").scores[0], 0);
    }

    #[test]
    fn patterns_score_once_each() {
        let c = classifier();
        let r = c.classify("```\ndef f(x):\n```\n```");
        assert_eq!(r.scores[0], 2);
        assert_eq!(c.classify("what is 2 + 2 and 3*4").scores[1], 1);
    }

    #[test]
    fn highest_score_wins_and_ties_go_to_the_first_category() {
        let c = classifier();
        assert_eq!(c.classify("prove the theorem about python").winner, Some(1));
        assert_eq!(c.classify("python contract").winner, Some(0));
        assert_eq!(c.classify("contract python").winner, Some(0));
        assert_eq!(c.classify("contract liability python").winner, Some(2));
    }

    #[test]
    fn min_score_gates_a_category() {
        let mut cats = vec![cat("strict", &["alpha"], &[])];
        cats[0].min_score = 2;
        let c = RulesClassifier::new(cats).unwrap();
        assert_eq!(c.classify("alpha").winner, None);
        assert_eq!(c.classify("alpha alpha").winner, Some(0));
    }

    #[test]
    fn unicode_keywords_fold_case() {
        let c = RulesClassifier::new(vec![cat("de", &["Übersetzung"], &[])]).unwrap();
        assert_eq!(c.classify("eine ÜBERSETZUNG bitte").winner, Some(0));
        assert_eq!(c.classify("übersetzungen").winner, None);
    }

    #[test]
    fn invalid_regex_names_category_and_pattern() {
        let errors = RulesClassifier::new(vec![cat("bad", &[], &["(unclosed"])]).unwrap_err();
        let msg = errors[0].to_string();
        assert!(msg.contains("`bad`") && msg.contains("(unclosed"), "{msg}");
    }

    #[test]
    fn empty_rules_never_win() {
        let c = RulesClassifier::new(vec![]).unwrap();
        assert_eq!(c.classify("anything").winner, None);
    }
}
