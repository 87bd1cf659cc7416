//! Validation and compilation of a routing YAML into the lookup tables the decision uses.
//!
//! Validating is compiling: every regex is compiled once, by the classifier that will run it, and
//! its errors are reported with the rest; the embedding model is loaded (or, on a reload, kept
//! when its files are unchanged) and every example embedded. The table exposes compiled queries
//! only (which clusters serve a model, which models a cluster serves, the classifier), never the
//! raw config.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ConfigError;
use super::schema::{EmbeddingConfig, RoutingConfig, Settings, UnknownModelPolicy};
use crate::affinity::Candidate;
use crate::classify::{
    CategoryClassifier, CategoryTexts, EmbeddingModel, RuleCategory, RulesClassifier, RulesError,
    Semantic,
};
use crate::openai::text::TextPolicy;

/// Where a compilation finds its embedding model.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ModelContext<'a> {
    /// The directory a relative `model_dir` is relative to (the routing YAML's); `None`: the
    /// working directory.
    pub(super) base_dir: Option<&'a Path>,
    /// The model of the table in force: kept if the config names the same, unchanged files.
    pub(super) previous: Option<&'a Arc<EmbeddingModel>>,
}

impl ModelContext<'_> {
    fn resolve(&self, dir: &Path) -> PathBuf {
        match self.base_dir {
            Some(base) if dir.is_relative() => base.join(dir),
            _ => dir.to_owned(),
        }
    }

    /// The model in `dir`: the previous one (the same `Arc`) if its files are unchanged, else
    /// freshly loaded.
    fn model(&self, dir: &Path) -> Result<Arc<EmbeddingModel>, String> {
        let dir = self.resolve(dir);
        if let Some(previous) = self.previous.filter(|m| m.unchanged(&dir)) {
            return Ok(Arc::clone(previous));
        }
        EmbeddingModel::load(&dir)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }
}

/// One problem in a routing config, naming the field as a path (`categories[1].model`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigIssue {
    pub field: String,
    pub problem: String,
}

/// The validated, compiled routing config.
#[derive(Debug)]
pub struct RoutingTable {
    /// The startup settings in force when the process started; a reload compiles new routes
    /// against these, so a table's limits never change while the process runs.
    settings: Settings,
    auto_models: Vec<String>,
    default_model: String,
    unknown_model: UnknownModelPolicy,
    text_policy: TextPolicy,
    expose_decision: bool,
    /// Model name -> clusters serving it, in config order, with weights.
    model_clusters: HashMap<String, Vec<(String, u32)>>,
    /// Model names in config order.
    models: Vec<String>,
    /// Cluster name -> models it serves, in config order.
    cluster_models: BTreeMap<String, Vec<String>>,
    /// Clusters whose continuations are pinned to their host too.
    pinned_clusters: HashSet<String>,
    classifier: CategoryClassifier,
    /// The model each category routes to, in category order.
    category_models: Vec<String>,
    /// Unix seconds at which the table was compiled (the `created` of the models it lists).
    compiled_at: u64,
}

impl RoutingTable {
    /// Validates the routes of `config` and compiles them with `settings` (the startup settings in
    /// force); every problem found is reported, not only the first.
    pub(super) fn compile(
        config: &RoutingConfig,
        settings: &Settings,
        models: ModelContext<'_>,
    ) -> Result<Self, ConfigError> {
        let mut issues = Vec::new();
        let mut issue =
            |field: String, problem: String| issues.push(ConfigIssue { field, problem });

        if config.auto_models.is_empty() {
            issue(
                "auto_models".into(),
                "must name at least one model (e.g. `auto`)".into(),
            );
        }
        if config.models.is_empty() {
            issue("models".into(), "at least one model is required".into());
        }

        let mut model_clusters: HashMap<String, Vec<(String, u32)>> = HashMap::new();
        let mut cluster_models: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, model) in config.models.iter().enumerate() {
            let field = format!("models[{i}]");
            if model.name.trim().is_empty() {
                issue(format!("{field}.name"), "must not be empty".into());
            }
            if model_clusters.contains_key(&model.name) {
                issue(
                    format!("{field}.name"),
                    format!("duplicate model `{}`", model.name),
                );
                continue;
            }
            if config.auto_models.contains(&model.name) {
                issue(
                    format!("{field}.name"),
                    format!("`{}` is also listed in auto_models", model.name),
                );
            }
            if model.clusters.is_empty() {
                issue(
                    format!("{field}.clusters"),
                    format!("model `{}` has no cluster", model.name),
                );
            }
            let mut seen = HashSet::new();
            let mut clusters = Vec::new();
            for (j, c) in model.clusters.iter().enumerate() {
                let cfield = format!("{field}.clusters[{j}]");
                if c.name.trim().is_empty() {
                    issue(format!("{cfield}.name"), "must not be empty".into());
                } else if !seen.insert(c.name.as_str()) {
                    issue(
                        format!("{cfield}.name"),
                        format!("duplicate cluster `{}`", c.name),
                    );
                }
                if c.weight == 0 {
                    issue(format!("{cfield}.weight"), "must be at least 1".into());
                }
                clusters.push((c.name.clone(), c.weight));
                let served = cluster_models.entry(c.name.clone()).or_default();
                if !served.contains(&model.name) {
                    served.push(model.name.clone());
                }
            }
            model_clusters.insert(model.name.clone(), clusters);
        }

        let mut declared = HashSet::new();
        for (i, cluster) in config.clusters.iter().enumerate() {
            if !declared.insert(cluster.name.as_str()) {
                issue(
                    format!("clusters[{i}].name"),
                    format!("duplicate cluster `{}`", cluster.name),
                );
            } else if !cluster_models.contains_key(&cluster.name) {
                issue(
                    format!("clusters[{i}].name"),
                    format!(
                        "cluster `{}` serves no model (list it under a model's clusters)",
                        cluster.name
                    ),
                );
            }
        }

        if !model_clusters.contains_key(&config.default_model) {
            issue(
                "default_model".into(),
                format!(
                    "unknown model `{}` (not listed under models)",
                    config.default_model
                ),
            );
        }

        let embedding = config.classification.embedding.as_ref();
        let model = embedding.and_then(|e| check_embedding(e, models, &mut issue));

        let mut category_names = HashSet::new();
        let mut rules = Vec::new();
        for (i, category) in config.categories.iter().enumerate() {
            let field = format!("categories[{i}]");
            if category.name.trim().is_empty() {
                issue(format!("{field}.name"), "must not be empty".into());
            } else if !category_names.insert(category.name.as_str()) {
                issue(
                    format!("{field}.name"),
                    format!("duplicate category `{}`", category.name),
                );
            }
            if !model_clusters.contains_key(&category.model) {
                issue(
                    format!("{field}.model"),
                    format!(
                        "unknown model `{}` (not listed under models)",
                        category.model
                    ),
                );
            }
            let examples = category.examples.as_deref();
            if category.keywords.iter().all(|k| k.trim().is_empty())
                && category.patterns.is_empty()
                && examples.is_none_or(<[String]>::is_empty)
            {
                issue(
                    field.clone(),
                    "needs at least one keyword, pattern or example".into(),
                );
            }
            for (j, k) in category.keywords.iter().enumerate() {
                if k.trim().is_empty() {
                    issue(format!("{field}.keywords[{j}]"), "must not be empty".into());
                }
            }
            match examples {
                Some([]) => issue(
                    format!("{field}.examples"),
                    "must not be empty (list example utterances, or leave the key out)".into(),
                ),
                Some(_) if embedding.is_none() => issue(
                    format!("{field}.examples"),
                    "examples need an embedding model: set classification.embedding.model_dir"
                        .into(),
                ),
                Some(list) => {
                    for (j, example) in list.iter().enumerate() {
                        if example.trim().is_empty() {
                            issue(format!("{field}.examples[{j}]"), "must not be empty".into());
                        }
                    }
                }
                None => {}
            }
            if let Some(min) = category.min_similarity {
                if embedding.is_none() {
                    issue(
                        format!("{field}.min_similarity"),
                        "needs an embedding model: set classification.embedding.model_dir".into(),
                    );
                } else if let Some(problem) = similarity_problem(min) {
                    issue(format!("{field}.min_similarity"), problem);
                }
            }
            rules.push(RuleCategory {
                name: category.name.clone(),
                keywords: category.keywords.clone(),
                patterns: category.patterns.clone(),
                min_score: category.min_score,
            });
        }

        if let Err(problems) = settings.validate() {
            issues.extend(problems);
        }
        // The classifier compiles the rules; its errors join the others.
        let classifier = match RulesClassifier::new(rules) {
            Ok(c) => Some(c),
            Err(errors) => {
                issues.extend(errors.iter().map(|e| match e {
                    RulesError::Regex {
                        category,
                        pattern,
                        source_text,
                        source,
                        ..
                    } => ConfigIssue {
                        field: format!("categories[{category}].patterns[{pattern}]"),
                        problem: format!("invalid regex {source_text:?}: {source}"),
                    },
                    other => ConfigIssue {
                        field: "categories".to_owned(),
                        problem: other.to_string(),
                    },
                }));
                None
            }
        };
        let Some(rules) = classifier.filter(|_| issues.is_empty()) else {
            return Err(ConfigError::Invalid(issues));
        };
        // Every example is embedded now, once per compilation (a reload recomputes them).
        let semantic = match (model, embedding) {
            (Some(model), Some(settings)) => {
                let texts: Vec<CategoryTexts<'_>> = config
                    .categories
                    .iter()
                    .map(|c| CategoryTexts {
                        examples: c.examples.as_deref().unwrap_or_default(),
                        keywords: &c.keywords,
                        min_similarity: c.min_similarity.unwrap_or(settings.min_similarity),
                    })
                    .collect();
                match Semantic::build(model, &texts) {
                    Ok(semantic) => Some(semantic),
                    Err(problems) => {
                        return Err(ConfigError::Invalid(
                            problems
                                .iter()
                                .map(|p| ConfigIssue {
                                    field: format!(
                                        "categories[{}].examples[{}]",
                                        p.category, p.example
                                    ),
                                    problem: "has no token the embedding model knows".into(),
                                })
                                .collect(),
                        ));
                    }
                }
            }
            _ => None,
        };
        let rule_weight = embedding.map_or(0.0, |e| e.rule_weight);
        let classifier = CategoryClassifier::new(rules, semantic, rule_weight);
        Ok(RoutingTable {
            settings: settings.clone(),
            auto_models: config.auto_models.clone(),
            default_model: config.default_model.clone(),
            unknown_model: config.unknown_model,
            expose_decision: config.expose_decision,
            text_policy: TextPolicy {
                include_instructions: config.classification.include_instructions,
            },
            models: config.models.iter().map(|m| m.name.clone()).collect(),
            model_clusters,
            cluster_models,
            pinned_clusters: config
                .clusters
                .iter()
                .filter(|c| c.pin_host)
                .map(|c| c.name.clone())
                .collect(),
            classifier,
            category_models: config.categories.iter().map(|c| c.model.clone()).collect(),
            compiled_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    /// Unix seconds at which this table was compiled.
    pub fn compiled_at(&self) -> u64 {
        self.compiled_at
    }

    /// The startup settings this table runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether `model` asks the router to choose.
    pub fn is_auto(&self, model: &str) -> bool {
        self.auto_models.iter().any(|m| m == model)
    }

    /// The model names that ask the router to choose, in config order.
    pub fn auto_models(&self) -> &[String] {
        &self.auto_models
    }

    /// The model for automatic requests that match no category and for pass-through traffic.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Every configured model, in config order.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Whether some cluster serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.model_clusters.contains_key(model)
    }

    /// Clusters serving `model` as hashing candidates (empty for an unknown model).
    pub fn candidates_for(&self, model: &str) -> Vec<Candidate<'_>> {
        self.model_clusters
            .get(model)
            .map(|cs| {
                cs.iter()
                    .map(|(name, weight)| Candidate {
                        name,
                        weight: *weight,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every cluster, each once with weight 1, in name order: the candidates for ids whose
    /// model is unknown (`GET /v1/responses/{id}`).
    pub fn all_candidates(&self) -> Vec<Candidate<'_>> {
        self.cluster_models
            .keys()
            .map(|name| Candidate { name, weight: 1 })
            .collect()
    }

    /// Models served by `cluster`, in config order (empty if the cluster is unknown).
    pub fn models_of(&self, cluster: &str) -> &[String] {
        self.cluster_models
            .get(cluster)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The compiled classifier.
    pub fn classifier(&self) -> &CategoryClassifier {
        &self.classifier
    }

    /// The embedding model, when `classification.embedding` names one.
    pub fn embedding_model(&self) -> Option<&Arc<EmbeddingModel>> {
        self.classifier.model()
    }

    /// The model each category routes to, by category index.
    pub fn category_model(&self, index: usize) -> Option<&str> {
        self.category_models.get(index).map(String::as_str)
    }

    /// The category names, in priority order.
    pub fn category_names(&self) -> impl Iterator<Item = &str> {
        self.classifier.categories().iter().map(|c| c.name.as_str())
    }

    /// Which text is classified.
    pub fn text_policy(&self) -> TextPolicy {
        self.text_policy
    }

    /// What to do with an unknown explicit model.
    pub fn unknown_model(&self) -> UnknownModelPolicy {
        self.unknown_model
    }

    /// Whether responses tell the client the decision (`x-router-model`, ...).
    pub fn exposes_decision(&self) -> bool {
        self.expose_decision
    }

    /// Whether requests pinned to `cluster` are pinned to their host as well.
    pub fn pins_hosts(&self, cluster: &str) -> bool {
        self.pinned_clusters.contains(cluster)
    }

    /// The largest body the router accepts (a startup setting).
    pub fn max_body_bytes(&self) -> usize {
        self.settings.max_body_bytes
    }

    /// Whether responses teach the router where their ids live (a startup setting).
    pub fn learns(&self) -> bool {
        self.settings.affinity.learn
    }
}

/// Checks `classification.embedding` and gets its model; problems go to `issue`.
fn check_embedding(
    embedding: &EmbeddingConfig,
    models: ModelContext<'_>,
    issue: &mut impl FnMut(String, String),
) -> Option<Arc<EmbeddingModel>> {
    const FIELD: &str = "classification.embedding";
    if let Some(problem) = similarity_problem(embedding.min_similarity) {
        issue(format!("{FIELD}.min_similarity"), problem);
    }
    if !(embedding.rule_weight.is_finite() && embedding.rule_weight >= 0.0) {
        issue(
            format!("{FIELD}.rule_weight"),
            format!(
                "must be a number of 0 or more, not {}",
                embedding.rule_weight
            ),
        );
    }
    if embedding.model_dir.as_os_str().is_empty() {
        issue(format!("{FIELD}.model_dir"), "must not be empty".into());
        return None;
    }
    match models.model(&embedding.model_dir) {
        Ok(model) => Some(model),
        Err(problem) => {
            issue(format!("{FIELD}.model_dir"), problem);
            None
        }
    }
}

/// What is wrong with a similarity threshold, if anything (a cosine: 0 to 1 is meaningful).
fn similarity_problem(value: f32) -> Option<String> {
    (!(0.0..=1.0).contains(&value)).then(|| format!("must be between 0 and 1, not {value}"))
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, from_yaml};

    const GOOD: &str = r#"
default_model: general
models:
  - name: general
    clusters: [{ name: c-general }, { name: c-shared, weight: 3 }]
  - name: coder
    clusters: [{ name: c-code }, { name: c-shared }]
categories:
  - name: coding
    model: coder
    keywords: [python]
    patterns: ['```']
"#;

    fn issues(yaml: &str) -> Vec<String> {
        match from_yaml(yaml) {
            Err(ConfigError::Invalid(issues)) => issues.iter().map(|i| i.to_string()).collect(),
            Err(e) => vec![format!("read error: {e}")],
            Ok(_) => vec![],
        }
    }

    #[test]
    fn good_config_compiles_with_defaults() {
        let t = from_yaml(GOOD).unwrap().table;
        assert!(t.is_auto("auto"));
        assert_eq!(t.max_body_bytes(), 10 * 1024 * 1024);
        assert_eq!(t.models_of("c-shared"), ["general", "coder"]);
        assert_eq!(t.candidates_for("general").len(), 2);
        assert_eq!(t.candidates_for("general")[1].weight, 3);
        let all: Vec<&str> = t.all_candidates().iter().map(|c| c.name).collect();
        assert_eq!(all, ["c-code", "c-general", "c-shared"]);
        assert_eq!(t.category_model(0), Some("coder"));
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let yaml = r#"
default_model: missing
auto_models: [auto, general]
models:
  - name: general
    clusters: [{ name: a, weight: 0 }, { name: a }]
  - name: general
    clusters: []
  - name: empty
    clusters: []
clusters:
  - name: lonely
affinity:
  capacity: 0
  redis_url: "http://not-redis"
categories:
  - name: c1
    model: nope
    keywords: [x]
  - name: c1
    model: general
    patterns: ['(unclosed']
  - name: c3
    model: general
"#;
        let found = issues(yaml);
        for expected in [
            "models[0].name: `general` is also listed in auto_models",
            "models[0].clusters[0].weight: must be at least 1",
            "models[0].clusters[1].name: duplicate cluster `a`",
            "models[1].name: duplicate model `general`",
            "models[2].clusters: model `empty` has no cluster",
            "clusters[0].name: cluster `lonely` serves no model",
            "default_model: unknown model `missing`",
            "categories[0].model: unknown model `nope`",
            "categories[1].name: duplicate category `c1`",
            "categories[1].patterns[0]: invalid regex \"(unclosed\"",
            "categories[2]: needs at least one keyword, pattern or example",
            "affinity.capacity: must be greater than 0",
            "affinity.redis_url: not a usable Redis URL",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(expected)),
                "missing {expected:?} in {found:#?}"
            );
        }
    }

    /// A model2vec directory with a 2-D word-level model: `code` points along x, `story` along y.
    fn model_dir(dir: &std::path::Path) {
        crate::classify::embedding::tests::tiny_model(
            dir,
            &["[UNK]", "code", "python", "story", "poem", "hello"],
            &[
                &[0.0, 0.0],
                &[1.0, 0.0],
                &[0.8, 0.6],
                &[0.0, 1.0],
                &[0.6, 0.8],
                &[0.7, 0.7],
            ],
        );
    }

    const WITH_MODEL: &str = r#"
default_model: general
models:
  - { name: general, clusters: [{ name: g }] }
  - { name: coder, clusters: [{ name: c }] }
  - { name: writer, clusters: [{ name: w }] }
classification:
  embedding: { model_dir: MODEL }
categories:
  - name: coding
    model: coder
    examples: ["code python", "python"]
  - name: stories
    model: writer
    keywords: [story]
    examples: ["poem story"]
    min_similarity: 0.9
"#;

    #[test]
    fn examples_and_keywords_become_prototypes() {
        let dir = tempfile::tempdir().unwrap();
        model_dir(dir.path());
        let yaml = WITH_MODEL.replace("MODEL", dir.path().to_str().unwrap());
        let t = from_yaml(&yaml).unwrap().table;
        let classifier = t.classifier();
        let semantic = classifier.semantic().expect("a model is configured");
        assert_eq!(semantic.min_similarity(0), Some(0.15), "the default");
        assert_eq!(semantic.min_similarity(1), Some(0.9));
        assert_eq!(classifier.rule_weight(), 0.1);
        use crate::classify::Classifier;
        let r = classifier.classify("python code");
        assert_eq!(r.winner, Some(0));
        assert_eq!(r.scores, vec![0, 0]);
        let r = classifier.classify("hello");
        assert!(
            r.similarities[1].unwrap() < 0.9 && r.winner == Some(0),
            "{r:?}"
        );
        assert_eq!(classifier.classify("unknown").winner, None);
    }

    #[test]
    fn embedding_problems_are_named_with_their_field() {
        let dir = tempfile::tempdir().unwrap();
        model_dir(dir.path());
        let path = dir.path().to_str().unwrap();
        let cases = [
            (
                WITH_MODEL.replace(
                    "embedding: { model_dir: MODEL }",
                    "include_instructions: false",
                ),
                vec![
                    "categories[0].examples: examples need an embedding model",
                    "categories[1].min_similarity: needs an embedding model",
                ],
            ),
            (
                WITH_MODEL
                    .replace("MODEL", path)
                    .replace(r#"["code python", "python"]"#, r#"["python", " ", "zzz"]"#)
                    .replace("min_similarity: 0.9", "min_similarity: -0.1"),
                vec![
                    "categories[0].examples[1]: must not be empty",
                    "categories[1].min_similarity: must be between 0 and 1, not -0.1",
                ],
            ),
            (
                WITH_MODEL
                    .replace("MODEL", path)
                    .replace(r#"["code python", "python"]"#, "[]"),
                vec!["categories[0].examples: must not be empty"],
            ),
            (
                WITH_MODEL.replace(
                    "{ model_dir: MODEL }",
                    &format!("{{ model_dir: {path}, min_similarity: 1.5, rule_weight: -1 }}"),
                ),
                vec![
                    "classification.embedding.min_similarity: must be between 0 and 1, not 1.5",
                    "classification.embedding.rule_weight: must be a number of 0 or more",
                ],
            ),
            (
                WITH_MODEL.replace("MODEL", &format!("{path}/missing")),
                vec![
                    "classification.embedding.model_dir: ",
                    "missing: No such file",
                ],
            ),
            (
                WITH_MODEL
                    .replace("MODEL", path)
                    .replace(r#"["code python", "python"]"#, r#"["python", "zzz"]"#),
                vec!["categories[0].examples[1]: has no token the embedding model knows"],
            ),
        ];
        for (yaml, expected) in cases {
            let found = issues(&yaml);
            for e in expected {
                assert!(
                    found.iter().any(|f| f.contains(e)),
                    "missing {e:?} in {found:#?}"
                );
            }
        }
        std::fs::write(dir.path().join("config.json"), r#"{"hidden_dim": 8}"#).unwrap();
        let found = issues(&WITH_MODEL.replace("MODEL", path));
        assert!(
            found[0].starts_with("classification.embedding.model_dir: ")
                && found[0].contains("dimension mismatch: hidden_dim is 8"),
            "{found:?}"
        );
    }

    #[test]
    fn a_reload_keeps_an_unchanged_model_and_embeds_the_examples_again() {
        use crate::config::{load, reload_reusing};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir(&models).unwrap();
        model_dir(&models);
        let path = dir.path().join("routing.yaml");
        // Relative to the YAML file's directory.
        std::fs::write(&path, WITH_MODEL.replace("MODEL", "models")).unwrap();
        let first = load(&path).unwrap().table;
        let model = Arc::clone(first.embedding_model().unwrap());
        let hello = |t: &super::RoutingTable| {
            use crate::classify::Classifier;
            t.classifier().classify("hello").similarities[0]
        };

        std::fs::write(
            &path,
            WITH_MODEL
                .replace("MODEL", "models")
                .replace(r#"["code python", "python"]"#, r#"["code"]"#),
        )
        .unwrap();
        let second = reload_reusing(&path, &first).unwrap().table;
        assert!(Arc::ptr_eq(&model, second.embedding_model().unwrap()));
        assert_ne!(hello(&first), hello(&second), "new examples, new prototype");

        // The model's files change: it is read again.
        model_dir(&models);
        std::fs::write(models.join("config.json"), "{}").unwrap();
        let third = reload_reusing(&path, &second).unwrap().table;
        assert!(!Arc::ptr_eq(&model, third.embedding_model().unwrap()));
        assert_eq!(hello(&third), hello(&second));
    }

    #[test]
    fn unknown_keys_and_bad_types_are_read_errors() {
        let with_typo = format!("{GOOD}\nunknown_modle: reject\n");
        assert!(
            issues(&with_typo)[0].contains("unknown field"),
            "{:?}",
            issues(&with_typo)
        );
        let bad_policy = format!("{GOOD}\nunknown_model: maybe\n");
        assert!(issues(&bad_policy)[0].starts_with("read error"));
    }
}
