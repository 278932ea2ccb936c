//! DensePhrases (Lee et al. 2021) in realm-db: answering by retrieving a phrase from an index
//! of the corpus's phrases, without a reader at query time.
//!
//! * [`PhraseEncoder`] (`encoder`): BERT with start, end and filter heads on every passage
//!   token and query heads on the question's `[CLS]`, with self-describing checkpoints;
//! * [`PhraseRows`] (from the store, which keeps them in phrase generations): one passage's
//!   stored tokens (the word boundaries that pass the filter), their start and end vectors
//!   and their byte offsets in the passage text; `words` finds the word boundaries;
//! * [`PhraseIndex`] (`search`): the rows of many passages held for DensePhrases' two-sided
//!   search, and [`phrase_answers`], which pools retrieved phrases into answers;
//! * phrase generations through the [`crate::Retriever`] (`store`): building one from a
//!   phrase encoder, rows for passages ingested since, and a [`PhraseSearcher`] over a pinned
//!   one (current, or a retired one: time travel);
//! * [`PhraseIvfConfig`] (`ivf`): the approximate index a [`PhraseIndex`] may build over its
//!   starts and ends (IVF with 8-bit codes), which searches probe instead of scanning;
//! * [`roll_up`] (`units`): phrase hits rolled up into sentences, passages or documents,
//!   each scored by its best phrase;
//! * [`PhraseTargets`] (`targets`): where a passage's phrases may start and end, and which
//!   are answers, for training the encoder.

mod encoder;
mod ivf;
mod search;
mod store;
mod targets;
mod units;
mod words;

pub use encoder::{PhraseEncoder, PhraseEncoderConfig, PhraseOutputs, PhraseQuery, QueryPooling};
pub use ivf::PhraseIvfConfig;
pub use realm_storage::phrase_rows::{PhraseRows, PhraseToken};
pub use search::{PhraseAnswer, PhraseHit, PhraseIndex, PhraseSearchOptions, phrase_answers};
pub use store::{PHRASE_ENCODER_BLOB_PREFIX, PhraseBuildOptions, PhraseSearcher};
pub use targets::PhraseTargets;
pub use units::{PassageText, RetrievalUnit, UnitHit, UnitSpan, roll_up};
