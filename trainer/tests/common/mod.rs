//! Shared fixtures: a synthetic corpus of made-up entities, a tiny random encoder with the
//! real MiniLM tokenizer, and a database with a first generation built from it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use realm_retriever::bert::BertConfig;
use realm_retriever::encoder::load_tokenizer;
use realm_retriever::eval::QaExample;
use realm_retriever::{
    BuildOptions, Device, Encoder, EncoderConfig, EncoderHead, Retriever, RetrieverOptions,
};
use realm_storage::{Db, NewPassage};

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

fn model_dir() -> PathBuf {
    std::env::var_os("REALM_DB_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.deps/models/all-MiniLM-L6-v2"
            ))
        })
}

/// A tiny randomly initialized encoder (real WordPiece tokenizer, normalized mean pooling).
pub fn tiny_encoder(seed: i64) -> Encoder {
    let tokenizer = load_tokenizer(&model_dir().join("tokenizer.json")).unwrap();
    let config = BertConfig::tiny(tokenizer.get_vocab_size(true) as i64);
    Encoder::random(
        config,
        tokenizer,
        EncoderHead::mean(true),
        EncoderConfig {
            max_len: 64,
            ..EncoderConfig::default()
        },
        seed,
    )
    .unwrap()
}

const PLACES: [&str; 32] = [
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

/// One passage per place: "<Place> is a town where the people grow <colour> <crop>. ...",
/// and the question "what do the people of <place> grow" with the answer "<colour> <crop>"
/// (unique per place).
pub fn corpus() -> (Vec<NewPassage>, Vec<QaExample>) {
    let mut passages = Vec::new();
    let mut questions = Vec::new();
    for (i, place) in PLACES.iter().enumerate() {
        let crop = format!("{} {}", COLOURS[i % 8], CROPS[i / 8]);
        passages.push(
            NewPassage::new(
                *place,
                format!(
                    "{place} is a town where the people grow {crop}. Its market opens at dawn and closes at dusk, and travellers say that the roads around the town are long, dusty and quiet during the summer months, when the farmers rest."
                ),
            )
            .with_external_id(format!("p{i}")),
        );
        questions.push(qa(
            i + 1,
            &format!("which crop is farmed in {}", place.to_lowercase()),
            &crop,
        ));
    }
    (passages, questions)
}

pub fn qa(line: usize, question: &str, answer: &str) -> QaExample {
    QaExample {
        line,
        question: question.to_owned(),
        answers: vec![answer.to_owned()],
        answer_patterns: Vec::new(),
        in_corpus: None,
        id: None,
    }
}

/// A database at `dir` holding the corpus and a first generation built with a random tiny
/// encoder of `seed`.
pub fn setup(dir: &Path, seed: i64) -> (Retriever, Vec<QaExample>) {
    let db = Db::create(dir).unwrap();
    let retriever = Retriever::new(db, cpu_options());
    let (passages, questions) = corpus();
    retriever.ingest(&passages).unwrap();
    retriever
        .build_generation(&tiny_encoder(seed), BuildOptions::default())
        .unwrap();
    (retriever, questions)
}
