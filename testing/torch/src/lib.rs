//! The fixtures of realm-db's tests that link libtorch: the tiny random encoder with the
//! real tokenizer, CPU retriever options, indexed databases and the toy world of made-up
//! towns; with the `reader` feature the tiny reader, with `trainer` a trainer runner. Re-exports
//! the libtorch-free fixtures of `realm-testing`, so tests import from one crate.

use std::path::Path;
use std::sync::OnceLock;

use realm_retriever::bert::BertConfig;
use realm_retriever::encoder::load_tokenizer;
use realm_retriever::eval::{QaExample, normalize_answer};
use realm_retriever::phrase::{
    PhraseBuildOptions, PhraseEncoder, PhraseEncoderConfig, PhraseSearchOptions,
};
use realm_retriever::{
    BuildOptions, Device, Encoder, EncoderConfig, EncoderHead, Retriever, RetrieverOptions,
};
use realm_storage::{Db, NewPassage};
use tokenizers::Tokenizer;

pub use realm_testing::*;

#[cfg(feature = "reader")]
mod reader;
#[cfg(feature = "reader")]
pub use reader::*;

#[cfg(feature = "trainer")]
mod trainer;
#[cfg(feature = "trainer")]
pub use trainer::*;

/// The MiniLM WordPiece tokenizer of [`model_dir`] (read once per process).
pub fn tokenizer() -> Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            load_tokenizer(&model_dir().join("tokenizer.json")).expect("tokenizer.json loads")
        })
        .clone()
}

/// [`BertConfig::tiny`] for the MiniLM vocabulary.
pub fn tiny_bert() -> BertConfig {
    BertConfig::tiny(tokenizer().get_vocab_size(true) as i64)
}

/// A tiny randomly initialized encoder (real WordPiece tokenizer, normalized mean pooling,
/// at most 64 tokens, CPU); equal seeds give equal weights.
pub fn tiny_encoder(seed: i64) -> Encoder {
    let runtime = EncoderConfig {
        max_len: 64,
        device: Device::Cpu,
        ..EncoderConfig::default()
    };
    Encoder::random(
        tiny_bert(),
        tokenizer(),
        EncoderHead::mean(true),
        runtime,
        seed,
    )
    .expect("a tiny encoder builds")
}

/// A tiny randomly initialized phrase encoder with `dim`-sized start and end vectors (real
/// WordPiece tokenizer, [`tiny_bert`], at most 64 tokens, batches of 8, filter threshold 0,
/// CPU); equal seeds give equal weights.
pub fn tiny_phrase_encoder(dim: i64, seed: i64) -> PhraseEncoder {
    let cfg = PhraseEncoderConfig {
        max_len: 64,
        batch_size: 8,
        device: Device::Cpu,
        ..PhraseEncoderConfig::default()
    };
    PhraseEncoder::random(tiny_bert(), tokenizer(), dim, cfg, seed).expect("a phrase encoder")
}

/// Builds and publishes a phrase generation of every passage with `encoder`, stored in f32;
/// returns its id.
pub fn build_phrases_f32(retriever: &Retriever, encoder: &PhraseEncoder) -> u64 {
    retriever
        .build_phrase_generation(
            encoder,
            PhraseBuildOptions {
                dtype: realm_storage::Dtype::F32,
                ..PhraseBuildOptions::default()
            },
        )
        .expect("a phrase generation")
}

/// The fraction of `questions` whose best phrase answer from the current phrase generation,
/// searched as the query path searches it (default options), is their first answer.
pub fn phrase_exact_match(retriever: &Retriever, questions: &[QaExample]) -> f64 {
    let searcher = retriever.phrase_searcher().expect("a phrase searcher");
    let opts = PhraseSearchOptions::default();
    let correct = questions
        .iter()
        .filter(|q| {
            let answers = searcher.answers(&q.question, &opts).expect("answers");
            answers
                .first()
                .is_some_and(|a| normalize_answer(&a.text) == normalize_answer(&q.answers[0]))
        })
        .count();
    correct as f64 / questions.len() as f64
}

/// Retriever options for tests: CPU, at most 64 tokens, builds in batches of 16.
pub fn cpu_options() -> RetrieverOptions {
    RetrieverOptions {
        encoder: EncoderConfig {
            device: Device::Cpu,
            max_len: 64,
            ..EncoderConfig::default()
        },
        build_batch: 16,
        ..RetrieverOptions::default()
    }
}

/// A new database at `dir` holding `passages`, with a first generation built by
/// [`tiny_encoder`]`(seed)`, behind a retriever with [`cpu_options`].
pub fn indexed_retriever(dir: &Path, passages: &[NewPassage], seed: i64) -> Retriever {
    let retriever = Retriever::new(Db::create(dir).expect("a new database"), cpu_options());
    retriever.ingest(passages).expect("the passages ingest");
    retriever
        .build_generation(&tiny_encoder(seed), BuildOptions::default())
        .expect("the first generation builds");
    retriever
}

/// A question with its accepted answer strings and regular expressions.
pub fn qa(line: usize, question: &str, answers: &[&str], patterns: &[&str]) -> QaExample {
    QaExample {
        line,
        question: question.to_owned(),
        answers: answers.iter().map(|s| s.to_string()).collect(),
        answer_patterns: patterns.iter().map(|s| s.to_string()).collect(),
        in_corpus: None,
        id: None,
    }
}

const TOWNS: [&str; 32] = [
    "Zorblat",
    "Quimbo",
    "Frelkin",
    "Vastrop",
    "Glimmar",
    "Drovnik",
    "Pelquor",
    "Skavitz",
    "Brontavel",
    "Yuzmek",
    "Olfrang",
    "Tressik",
    "Wumbarra",
    "Kelvoth",
    "Nirmalo",
    "Chuzzit",
    "Haldrovia",
    "Ixtremo",
    "Jorvange",
    "Lumquist",
    "Mextravo",
    "Ruvilkan",
    "Sprondel",
    "Tavorquin",
    "Ulbrecht",
    "Vexmoor",
    "Grindavo",
    "Plonkett",
    "Zephtari",
    "Kronvelt",
    "Bazzimor",
    "Fendrago",
];
const COLOURS: [&str; 8] = [
    "purple", "silver", "crimson", "golden", "striped", "spotted", "frosted", "smoky",
];
const CROPS: [&str; 4] = ["melons", "beans", "turnips", "mushrooms"];

/// The toy world of 32 made-up towns: one passage per town (external id `p<i>`), "<Town> is
/// a town where the people grow <colour> <crop>. ...", and the question "which crop is
/// farmed in <town>" with the answer "<colour> <crop>" (unique per town).
pub fn towns() -> (Vec<NewPassage>, Vec<QaExample>) {
    let mut passages = Vec::new();
    let mut questions = Vec::new();
    for (i, town) in TOWNS.iter().enumerate() {
        let crop = format!("{} {}", COLOURS[i % 8], CROPS[i / 8]);
        passages.push(
            NewPassage::new(
                *town,
                format!(
                    "{town} is a town where the people grow {crop}. Its market opens at dawn and closes at dusk, and travellers say that the roads around the town are long, dusty and quiet during the summer months, when the farmers rest."
                ),
            )
            .with_external_id(format!("p{i}")),
        );
        questions.push(qa(
            i + 1,
            &format!("which crop is farmed in {}", town.to_lowercase()),
            &[&crop],
            &[],
        ));
    }
    (passages, questions)
}

/// A database at `dir` holding [`towns`] with a first generation built by
/// [`tiny_encoder`]`(seed)`, and the towns' questions.
pub fn towns_retriever(dir: &Path, seed: i64) -> (Retriever, Vec<QaExample>) {
    let (passages, questions) = towns();
    (indexed_retriever(dir, &passages, seed), questions)
}

/// The toy world of 16 made-up painters and the made-up towns they lived in, two passages
/// per painter: "The painter <P> lived for many years in the town of <T>, ..." (external id
/// `a<i>`) and "The town of <T> is known as the home of the painter <P>, ..." (`b<i>`). Each
/// passage is one sentence whose salient spans are the two names, so masking either one
/// leaves a sentence whose answer is in the painter's other passage. The questions ask
/// "in which town did the painter <p> live" (answer <T>).
pub fn painters() -> (Vec<NewPassage>, Vec<QaExample>) {
    let mut passages = Vec::new();
    let mut questions = Vec::new();
    for i in 0..16 {
        let (painter, town) = (TOWNS[16 + i], TOWNS[i]);
        passages.push(
            NewPassage::new(
                painter,
                format!(
                    "The painter {painter} lived for many years in the town of {town}, where the market opens at dawn."
                ),
            )
            .with_external_id(format!("a{i}")),
        );
        passages.push(
            NewPassage::new(
                town,
                format!(
                    "The town of {town} is known as the home of the painter {painter}, and its roads are long and quiet."
                ),
            )
            .with_external_id(format!("b{i}")),
        );
        questions.push(qa(
            i + 1,
            &format!(
                "in which town did the painter {} live",
                painter.to_lowercase()
            ),
            &[town],
            &[],
        ));
    }
    (passages, questions)
}

/// The vocabulary of the checkpoint fixtures' tokenizer, ids in order.
pub const FIXTURE_VOCAB: &str = "[PAD] [UNK] [CLS] [SEP] [MASK] the a of in is was by who what \
    where wrote ham ##let shakespeare william play tragedy denmark london globe theatre river \
    thames stood near written ##s ##ed . , ?";

/// The WordPiece tokenizer of [`FIXTURE_VOCAB`], built in code (no model folder).
pub fn fixture_tokenizer() -> Tokenizer {
    let vocab: Vec<&str> = FIXTURE_VOCAB.split_whitespace().collect();
    realm_retriever::tokenizer::bert_wordpiece(&vocab).expect("the fixture tokenizer builds")
}

/// The BERT of the checkpoint fixtures (encoders and readers): 16 hidden units in 2 heads,
/// 2 layers of 32 inner units, 32 positions, over [`FIXTURE_VOCAB`].
pub fn fixture_bert() -> BertConfig {
    BertConfig {
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 32,
        ..BertConfig::tiny(FIXTURE_VOCAB.split_whitespace().count() as i64)
    }
}
