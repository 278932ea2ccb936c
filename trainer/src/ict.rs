//! Inverse cloze task examples (ORQA): a sentence of a passage is a pseudo-query whose
//! positive is the rest of the passage.

use rand::Rng;

/// The probability that the pseudo-query sentence is left in its context (ORQA keeps it
/// 10% of the time, so the encoder also learns word overlap).
pub const KEEP_PROBABILITY: f64 = 0.1;

/// The sentences of a text: it is split after `.`, `?` or `!` followed by white space; the
/// punctuation stays with its sentence, surrounding white space is trimmed, empty pieces
/// are dropped.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '?' | '!')
            && chars.peek().is_some_and(|(_, next)| next.is_whitespace())
        {
            let end = i + c.len_utf8();
            push_trimmed(&mut out, &text[start..end]);
            start = end;
        }
    }
    push_trimmed(&mut out, &text[start..]);
    out
}

fn push_trimmed<'a>(out: &mut Vec<&'a str>, piece: &'a str) {
    let piece = piece.trim();
    if !piece.is_empty() {
        out.push(piece);
    }
}

/// One ICT training pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IctExample {
    /// The pseudo-query.
    pub query: String,
    /// The passage text the query should retrieve.
    pub context: String,
    /// Whether the query sentence was left in the context.
    pub kept: bool,
}

/// The ICT pair of `text` with sentence `pick` (modulo the sentence count) as the query,
/// removed from the context unless `keep`. A text of fewer than two sentences is split by
/// words instead: the first half is the query and the rest the context (`keep` is then
/// ignored); a single word is both.
pub fn ict_pair(text: &str, pick: usize, keep: bool) -> IctExample {
    let sentences = split_sentences(text);
    if sentences.len() >= 2 {
        let pick = pick % sentences.len();
        let query = sentences[pick].to_owned();
        let context = if keep {
            sentences.join(" ")
        } else {
            sentences
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != pick)
                .map(|(_, s)| *s)
                .collect::<Vec<_>>()
                .join(" ")
        };
        return IctExample {
            query,
            context,
            kept: keep,
        };
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 2 {
        let t = text.trim().to_owned();
        return IctExample {
            query: t.clone(),
            context: t,
            kept: true,
        };
    }
    let half = words.len() / 2;
    IctExample {
        query: words[..half].join(" "),
        context: words[half..].join(" "),
        kept: false,
    }
}

/// A random ICT pair of `text`: a uniformly chosen sentence, kept with probability
/// [`KEEP_PROBABILITY`].
pub fn sample_ict_pair(text: &str, rng: &mut impl Rng) -> IctExample {
    let n = split_sentences(text).len().max(1);
    let pick = rng.random_range(0..n);
    let keep = rng.random::<f64>() < KEEP_PROBABILITY;
    ict_pair(text, pick, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn sentences_split_after_terminal_punctuation_and_space() {
        assert_eq!(
            split_sentences("Zorblat is a city. Is it big? Yes! It has 3.5 million people."),
            vec![
                "Zorblat is a city.",
                "Is it big?",
                "Yes!",
                "It has 3.5 million people."
            ]
        );
        // No space after the dot: no boundary (decimals, abbreviations like e.g.x).
        assert_eq!(
            split_sentences("Version 2.0 is out"),
            vec!["Version 2.0 is out"]
        );
        assert_eq!(split_sentences("  One.  Two  "), vec!["One.", "Two"]);
        assert!(split_sentences("   ").is_empty());
    }

    #[test]
    fn the_query_sentence_is_removed_from_its_context_unless_kept() {
        let text = "Alpha runs. Beta jumps. Gamma sleeps.";
        let removed = ict_pair(text, 1, false);
        assert_eq!(removed.query, "Beta jumps.");
        assert_eq!(removed.context, "Alpha runs. Gamma sleeps.");
        assert!(!removed.kept);
        let kept = ict_pair(text, 1, true);
        assert_eq!(kept.query, "Beta jumps.");
        assert_eq!(kept.context, text);
        assert!(kept.kept);
    }

    #[test]
    fn a_single_sentence_is_split_by_words() {
        let pair = ict_pair("one two three four five", 0, true);
        assert_eq!(pair.query, "one two");
        assert_eq!(pair.context, "three four five");
        assert!(!pair.kept);
        let single = ict_pair("word", 3, false);
        assert_eq!(
            (single.query.as_str(), single.context.as_str()),
            ("word", "word")
        );
    }

    #[test]
    fn sampling_keeps_about_a_tenth_and_picks_every_sentence() {
        let text = "A b. C d. E f. G h.";
        let mut rng = StdRng::seed_from_u64(7);
        let mut kept = 0;
        let mut picked = std::collections::HashSet::new();
        for _ in 0..2000 {
            let pair = sample_ict_pair(text, &mut rng);
            kept += usize::from(pair.kept);
            if !pair.kept {
                assert!(!pair.context.contains(&pair.query));
            }
            picked.insert(pair.query);
        }
        assert_eq!(picked.len(), 4);
        assert!((120..=280).contains(&kept), "kept {kept} of 2000");
    }
}
