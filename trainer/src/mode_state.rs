//! What a run knows of the mode it trains in: the mode's state, constructed whole, and what
//! the training loop asks of it (its examples, its towers and their optimizers, whether it
//! refreshes the index, attaches a query tower or publishes a generation).

use realm_reader::Reader;
use realm_retriever::phrase::PhraseEncoder;

use crate::adamw::AdamW;
use crate::dual::{DUAL_NOTE, Dual};
use crate::ict::{ICT_NOTE, Ict};
use crate::phrase_query_side::PhraseQuerySide;
use crate::phrase_training::PhraseTraining;
use crate::qa::{QA_NOTE, Qa};
use crate::query_side::{QUERY_SIDE_NOTE, QuerySide};
use crate::realm::{REALM_NOTE, Realm};
use crate::span_pretraining::SpanPretraining;
use crate::towers::{PhraseTower, ReaderTower, Tower};

/// The state of the mode a run trains in, each constructed whole (boxed: the towers are
/// large and of different sizes).
pub(crate) enum ModeState {
    QuerySide(Box<QuerySide>),
    Dual(Box<Dual>),
    Ict(Box<Ict>),
    Qa(Box<Qa>),
    Spans(Box<SpanPretraining>),
    Realm(Box<Realm>),
    Phrase(Box<PhraseTraining>),
    PhraseQuery(Box<PhraseQuerySide>),
}

/// Models a fresh run starts from instead of the database's or a model folder's (tests use
/// tiny random ones).
#[derive(Default)]
pub(crate) struct Given {
    pub reader: Option<Reader>,
    pub phrase_encoder: Option<PhraseEncoder>,
}

impl ModeState {
    /// Usable examples: supervised questions, QA pairs, REALM sentences or ICT passages.
    pub(crate) fn examples(&self) -> usize {
        match self {
            ModeState::QuerySide(m) => m.supervision.examples.len(),
            ModeState::Dual(m) => m.supervision.examples.len(),
            ModeState::Ict(m) => m.passages.len(),
            ModeState::Qa(m) => m.pairs.len(),
            ModeState::Spans(m) => m.examples.len(),
            ModeState::Realm(m) => m.examples(),
            ModeState::Phrase(m) => m.supervision.examples.len(),
            ModeState::PhraseQuery(m) => m.examples(),
        }
    }

    /// Training questions dropped before the run.
    pub(crate) fn dropped(&self) -> usize {
        match self {
            ModeState::QuerySide(m) => m.supervision.dropped,
            ModeState::Dual(m) => m.supervision.dropped,
            ModeState::Qa(m) => m.dropped,
            ModeState::Spans(m) => m.dropped,
            ModeState::Phrase(m) => m.dropped,
            ModeState::PhraseQuery(m) => m.dropped,
            ModeState::Ict(_) | ModeState::Realm(_) => 0,
        }
    }

    /// The document tower, in the modes that train one.
    pub(crate) fn document(&self) -> Option<&Tower> {
        match self {
            ModeState::Dual(m) => Some(&m.document),
            ModeState::Ict(m) => Some(&m.document),
            ModeState::Realm(m) => Some(&m.document),
            ModeState::QuerySide(_)
            | ModeState::Qa(_)
            | ModeState::Spans(_)
            | ModeState::Phrase(_)
            | ModeState::PhraseQuery(_) => None,
        }
    }

    /// The phrase encoder, in phrase training and phrase query-side training (where only
    /// its question side trains).
    pub(crate) fn phrase(&self) -> Option<&PhraseTower> {
        match self {
            ModeState::Phrase(m) => Some(&m.tower),
            ModeState::PhraseQuery(m) => Some(&m.tower),
            _ => None,
        }
    }

    /// The phrase generation a phrase query-side run trains against.
    pub(crate) fn phrase_generation(&self) -> Option<u64> {
        match self {
            ModeState::PhraseQuery(m) => Some(m.generation()),
            _ => None,
        }
    }

    /// The reader, in the modes that train one.
    pub(crate) fn reader(&self) -> Option<&ReaderTower> {
        match self {
            ModeState::Qa(m) => Some(&m.reader),
            ModeState::Spans(m) => Some(&m.reader),
            ModeState::Realm(m) => Some(&m.reader),
            ModeState::QuerySide(_)
            | ModeState::Dual(_)
            | ModeState::Ict(_)
            | ModeState::Phrase(_)
            | ModeState::PhraseQuery(_) => None,
        }
    }

    /// The optimizers of the mode's own towers (the query tower's is the context's).
    pub(crate) fn optimizers_mut(&mut self) -> Vec<(&'static str, &mut AdamW)> {
        match self {
            ModeState::QuerySide(_) => Vec::new(),
            ModeState::Dual(m) => vec![("document", &mut m.document.opt)],
            ModeState::Ict(m) => vec![("document", &mut m.document.opt)],
            ModeState::Qa(m) => vec![("reader", &mut m.reader.opt)],
            ModeState::Spans(m) => vec![("reader", &mut m.reader.opt)],
            ModeState::Realm(m) => vec![
                ("document", &mut m.document.opt),
                ("reader", &mut m.reader.opt),
            ],
            ModeState::Phrase(m) => vec![("phrase", &mut m.tower.opt)],
            ModeState::PhraseQuery(m) => vec![("phrase", &mut m.tower.opt)],
        }
    }

    /// The provenance note of the generations the index builder publishes, in the modes
    /// that publish one.
    pub(crate) fn builder_note(&self) -> Option<&'static str> {
        match self {
            ModeState::Dual(_) => Some(DUAL_NOTE),
            ModeState::Ict(_) => Some(ICT_NOTE),
            ModeState::Realm(_) => Some(REALM_NOTE),
            ModeState::QuerySide(_)
            | ModeState::Qa(_)
            | ModeState::Spans(_)
            | ModeState::Phrase(_)
            | ModeState::PhraseQuery(_) => None,
        }
    }

    /// Whether the index refreshes during training (every `refresh_every` steps).
    pub(crate) fn refreshes(&self) -> bool {
        matches!(self, ModeState::Dual(_) | ModeState::Realm(_))
    }

    /// The note of the query-encoder version attached to the passage generation at the end,
    /// in the modes that attach one (phrase query-side attaches to its phrase generation;
    /// see [`crate::PHRASE_QUERY_NOTE`]).
    pub(crate) fn attach_note(&self) -> Option<&'static str> {
        match self {
            ModeState::QuerySide(_) => Some(QUERY_SIDE_NOTE),
            ModeState::Qa(_) => Some(QA_NOTE),
            ModeState::Dual(_)
            | ModeState::Ict(_)
            | ModeState::Spans(_)
            | ModeState::Realm(_)
            | ModeState::Phrase(_)
            | ModeState::PhraseQuery(_) => None,
        }
    }
}
