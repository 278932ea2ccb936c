//! Answer patterns in Python's `re` syntax, translated for the `regex` crate.
//!
//! CuratedTREC's patterns, as in DPR's regex mode, are Python regular expressions compiled
//! with `re.IGNORECASE | re.UNICODE | re.MULTILINE`. [`translate`] parses a pattern as
//! Python 3.11's parser does and writes it in the crate's syntax, spelling out Python's
//! meaning where the two differ, or rejects it with Python's reason:
//!
//! * a backslash before a character that is not an ASCII letter or digit is that
//!   character (`\°`, `\ě`, `\<`: not the crate's start-of-word); before an ASCII letter
//!   Python gives no meaning (`\e`, `\z`, `\p`) it is an error, as in Python;
//! * `\w` is a letter, a number or `_`, `\s` includes U+001C..U+001F, `\Z` ends the text,
//!   `\0`, `\012` and `\101` are octal, `\x`, `\u` and `\U` take 2, 4 and 8 hex digits;
//! * a `{` that starts no repetition is a literal, `{,n}` is 0 to n; a repetition of
//!   nothing or of an anchor, and a repetition repeated, are errors;
//! * in a class, a leading `]`, `[`, `&&`, `~~` and `--` are literals, `\b` is a backspace,
//!   and a range with a class escape at an end is an error;
//! * `(?#...)` comments are dropped, `(?P<name>...)` is a group, global flags come first.
//!
//! One reading is added: an escaped ASCII letter followed by combining marks is that letter
//! with its marks, as an escaped accented letter reads after NFD normalization (`Sn\ě\žka`
//! becomes `Sn\e◌̌\z◌̌ka`, which Python rejects). What the crate cannot express is rejected
//! too: back-references, look-around, atomic groups, possessive repetition, conditional
//! groups, named characters (`\N{...}`) and verbose mode; `\b` and `\B` keep the crate's
//! Unicode word characters. `tests/fixtures/python_re_cases.json` records what Python does
//! on a list of cases (and these departures); a test checks the translation agrees.

use regex::{Regex, RegexBuilder};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::error::{Error, Result};

/// Python's `\w` for `str` patterns (`str.isalnum()` or `_`), inside a class.
const WORD: &str = r"\p{L}\p{N}_";
/// Python's `\s` for `str` patterns (`str.isspace()`), inside a class.
const SPACE: &str = r"\s\x{1C}-\x{1F}";

/// Compiles a Python pattern as DPR does (case-insensitive, multi-line, Unicode), without
/// normalizing it.
///
/// # Errors
///
/// [`Error::AnswerPattern`] naming the pattern when Python would reject it, when the
/// `regex` crate cannot express it, or when it is empty (it would match every passage).
pub fn compile(pattern: &str) -> Result<Regex> {
    build(pattern, &translate(pattern).map_err(|r| bad(pattern, r))?)
}

/// [`compile`] for matching NFD-normalized text: the translation's literals are
/// NFD-normalized, escaped ones included (a character class's range ends are kept whole).
pub(crate) fn compile_nfd(pattern: &str) -> Result<Regex> {
    let translated = translate(pattern).map_err(|r| bad(pattern, r))?;
    build(pattern, &translated.nfd().collect::<String>())
}

fn build(pattern: &str, translated: &str) -> Result<Regex> {
    if pattern.is_empty() {
        return Err(bad(
            pattern,
            "an empty pattern would match every passage".to_owned(),
        ));
    }
    RegexBuilder::new(translated)
        .case_insensitive(true)
        .multi_line(true)
        .unicode(true)
        .build()
        .map_err(|e| bad(pattern, crate_error(e)))
}

/// The `regex` crate's reason on one line (a syntax error comes with a diagram of the
/// pattern above it).
fn crate_error(e: regex::Error) -> String {
    let reason = match &e {
        regex::Error::Syntax(s) => s.lines().rev().find_map(|l| l.strip_prefix("error: ")),
        _ => None,
    }
    .map_or_else(|| e.to_string().replace('\n', " "), str::to_owned);
    format!("the regex crate cannot compile its translation ({reason})")
}

fn bad(pattern: &str, reason: String) -> Error {
    Error::AnswerPattern {
        pattern: pattern.to_owned(),
        reason,
    }
}

/// Translates a Python `re` pattern into the `regex` crate's syntax (see the module
/// docs), or says why it cannot be: Python rejects it, or the crate cannot express it.
pub fn translate(pattern: &str) -> Result<String, String> {
    let mut t = Translator {
        chars: pattern.chars().collect(),
        i: 0,
        out: String::with_capacity(pattern.len() + 8),
        prev: Prev::Nothing,
        depth: 0,
        groups: 0,
        global_flags_ok: true,
    };
    t.run().map_err(|r| r.to_string())?;
    Ok(t.out)
}

/// What the last item of the current sequence was, which decides what a quantifier does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prev {
    /// Nothing yet (start of the pattern, of a group or of an alternative).
    Nothing,
    /// An anchor (`^`, `$`, `\A`, `\Z`, `\b`, `\B`): Python cannot repeat it.
    Anchor,
    /// Something repeatable.
    Atom,
    /// A repetition, which a `?` can still make lazy.
    Repeat,
    /// A lazy repetition: nothing may follow it.
    Lazy,
}

/// One element of a character class.
enum ClassItem {
    Char(char),
    /// A class escape, written for use inside the crate's brackets.
    Set(String),
}

struct Translator {
    chars: Vec<char>,
    i: usize,
    out: String,
    prev: Prev,
    /// Groups open at the cursor.
    depth: usize,
    /// Capturing groups opened so far.
    groups: usize,
    /// Whether global flags may come next: nothing but global flags and comments precede.
    global_flags_ok: bool,
}

impl Translator {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    fn run(&mut self) -> Result<(), Reject> {
        while let Some(c) = self.peek() {
            self.i += 1;
            let flags_ok = std::mem::replace(&mut self.global_flags_ok, false);
            match c {
                '\\' => self.escape()?,
                '[' => self.class()?,
                '(' => self.group(flags_ok)?,
                ')' => {
                    if self.depth == 0 {
                        return Err(py("unbalanced parenthesis"));
                    }
                    self.depth -= 1;
                    self.out.push(')');
                    self.prev = Prev::Atom;
                }
                '|' => {
                    self.out.push('|');
                    self.prev = Prev::Nothing;
                }
                '*' | '+' | '?' => self.quantifier(&c.to_string())?,
                '{' => match repetition(&self.chars[self.i..]) {
                    Some((_, _, true)) => return Err(py("min repeat greater than max repeat")),
                    Some((rewritten, used, false)) => {
                        self.i += used;
                        self.quantifier(&rewritten)?;
                    }
                    None => self.literal('{'),
                },
                '^' | '$' => {
                    self.out.push(c);
                    self.prev = Prev::Anchor;
                }
                '.' => {
                    self.out.push('.');
                    self.prev = Prev::Atom;
                }
                _ => self.literal(c),
            }
        }
        if self.depth > 0 {
            return Err(py("missing ), unterminated subpattern"));
        }
        Ok(())
    }

    fn literal(&mut self, c: char) {
        push_literal(&mut self.out, c);
        self.prev = Prev::Atom;
    }

    fn atom(&mut self, s: &str) {
        self.out.push_str(s);
        self.prev = Prev::Atom;
    }

    fn anchor(&mut self, s: &str) {
        self.out.push_str(s);
        self.prev = Prev::Anchor;
    }

    /// A quantifier (`*`, `+`, `?` or a `{m,n}` already in the crate's spelling).
    fn quantifier(&mut self, q: &str) -> Result<(), Reject> {
        match self.prev {
            Prev::Nothing | Prev::Anchor => Err(py("nothing to repeat")),
            Prev::Atom => {
                self.out.push_str(q);
                self.prev = Prev::Repeat;
                Ok(())
            }
            Prev::Repeat if q == "?" => {
                self.out.push('?');
                self.prev = Prev::Lazy;
                Ok(())
            }
            Prev::Repeat if q == "+" => Err(unsupported("possessive repetition")),
            Prev::Repeat | Prev::Lazy => Err(py("multiple repeat")),
        }
    }

    /// After a backslash outside a class.
    fn escape(&mut self) -> Result<(), Reject> {
        let Some(e) = self.peek() else {
            return Err(py("bad escape (end of pattern)"));
        };
        self.i += 1;
        if e.is_ascii_alphabetic() && self.peek().is_some_and(is_combining_mark) {
            // The NFD form of an escaped accented letter: the letter, then its marks.
            self.literal(e);
            while let Some(m) = self.peek().filter(|&m| is_combining_mark(m)) {
                self.i += 1;
                push_literal(&mut self.out, m);
            }
            return Ok(());
        }
        match e {
            'A' => self.anchor(r"\A"),
            'Z' => self.anchor(r"\z"),
            'b' => self.anchor(r"\b"),
            'B' => self.anchor(r"\B"),
            'd' => self.atom(r"\d"),
            'D' => self.atom(r"\D"),
            'w' => self.atom(&format!("[{WORD}]")),
            'W' => self.atom(&format!("[^{WORD}]")),
            's' => self.atom(&format!("[{SPACE}]")),
            'S' => self.atom(&format!("[^{SPACE}]")),
            '0'..='9' => self.digit_escape(e)?,
            _ => {
                let c = self.char_escape(e)?;
                self.literal(c);
            }
        }
        Ok(())
    }

    /// `\0`, octal `\ooo`, or a group reference `\n` (which the crate cannot express).
    fn digit_escape(&mut self, first: char) -> Result<(), Reject> {
        if first == '0'
            || first.is_digit(8)
                && self.peek().is_some_and(|c| c.is_digit(8))
                && self.peek_at(1).is_some_and(|c| c.is_digit(8))
        {
            let c = self.octal(first)?;
            self.literal(c);
            return Ok(());
        }
        let mut digits = String::from(first);
        if let Some(d) = self.peek().filter(char::is_ascii_digit) {
            self.i += 1;
            digits.push(d);
        }
        let group: usize = digits.parse().map_err(|_| py("bad group number"))?;
        if group <= self.groups {
            Err(unsupported("back-references"))
        } else {
            Err(py(format!("invalid group reference {group}")))
        }
    }

    /// An octal escape: `first` and up to two more octal digits.
    fn octal(&mut self, first: char) -> Result<char, Reject> {
        let mut digits = String::from(first);
        while digits.len() < 3 && self.peek().is_some_and(|c| c.is_digit(8)) {
            digits.push(self.chars[self.i]);
            self.i += 1;
        }
        let value = u32::from_str_radix(&digits, 8).map_err(|_| py("bad octal escape"))?;
        if value > 0o377 {
            return Err(py(format!(
                "octal escape value \\{digits} outside of range 0-0o377"
            )));
        }
        char::from_u32(value).ok_or_else(|| py("bad octal escape"))
    }

    /// An escape that stands for one character (after the backslash and `e`), in or out
    /// of a class; letters and digits Python gives no meaning are errors.
    fn char_escape(&mut self, e: char) -> Result<char, Reject> {
        let hex = |t: &mut Self, n: usize| -> Result<char, Reject> {
            let incomplete = |got: &str| py(format!("incomplete escape \\{e}{got}"));
            let start = t.i;
            let digits: String = t.chars[start..]
                .iter()
                .take(n)
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            if digits.len() < n {
                return Err(incomplete(&digits));
            }
            t.i += n;
            let value = u32::from_str_radix(&digits, 16).map_err(|_| incomplete(&digits))?;
            char::from_u32(value).ok_or_else(|| py(format!("bad escape \\{e}{digits}")))
        };
        match e {
            'a' => Ok('\x07'),
            'f' => Ok('\x0c'),
            'n' => Ok('\n'),
            'r' => Ok('\r'),
            't' => Ok('\t'),
            'v' => Ok('\x0b'),
            'x' => hex(self, 2),
            'u' => hex(self, 4),
            'U' => hex(self, 8),
            'N' => Err(unsupported("named characters (\\N{...})")),
            _ if e.is_ascii_alphanumeric() => Err(py(format!("bad escape \\{e}"))),
            _ => Ok(e),
        }
    }

    /// A character class, after its `[`.
    fn class(&mut self) -> Result<(), Reject> {
        let unterminated = || py("unterminated character set");
        self.out.push('[');
        if self.eat('^') {
            self.out.push('^');
        }
        let mut first = true;
        loop {
            let c = self.peek().ok_or_else(unterminated)?;
            if c == ']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            let lo = self.class_item()?;
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.i += 1;
                let hi = self.class_item()?;
                match (lo, hi) {
                    (ClassItem::Char(lo), ClassItem::Char(hi)) if lo <= hi => {
                        // Non-ASCII ends in hex: NFD normalization must not split them.
                        for (c, sep) in [(lo, "-"), (hi, "")] {
                            if c.is_ascii() {
                                push_literal(&mut self.out, c);
                            } else {
                                push_hex(&mut self.out, c);
                            }
                            self.out.push_str(sep);
                        }
                    }
                    _ => return Err(py("bad character range")),
                }
            } else {
                match lo {
                    ClassItem::Char(c) => push_literal(&mut self.out, c),
                    ClassItem::Set(s) => self.out.push_str(&s),
                }
            }
        }
        self.out.push(']');
        self.prev = Prev::Atom;
        Ok(())
    }

    fn class_item(&mut self) -> Result<ClassItem, Reject> {
        let c = self
            .peek()
            .ok_or_else(|| py("unterminated character set"))?;
        self.i += 1;
        if c != '\\' {
            return Ok(ClassItem::Char(c));
        }
        let Some(e) = self.peek() else {
            return Err(py("bad escape (end of pattern)"));
        };
        self.i += 1;
        if e.is_ascii_alphabetic() && self.peek().is_some_and(is_combining_mark) {
            // The marks follow as characters of the class, as NFD makes them.
            return Ok(ClassItem::Char(e));
        }
        Ok(match e {
            'd' => ClassItem::Set(r"\d".to_owned()),
            'D' => ClassItem::Set(r"\D".to_owned()),
            'w' => ClassItem::Set(WORD.to_owned()),
            'W' => ClassItem::Set(format!("[^{WORD}]")),
            's' => ClassItem::Set(SPACE.to_owned()),
            'S' => ClassItem::Set(format!("[^{SPACE}]")),
            'b' => ClassItem::Char('\x08'),
            '0'..='7' => ClassItem::Char(self.octal(e)?),
            _ => ClassItem::Char(self.char_escape(e)?),
        })
    }

    /// A group, after its `(`; `flags_ok`: whether global flags may stand here.
    fn group(&mut self, flags_ok: bool) -> Result<(), Reject> {
        if !self.eat('?') {
            self.groups += 1;
            return self.open("(");
        }
        let Some(kind) = self.peek() else {
            return Err(py("unexpected end of pattern"));
        };
        match kind {
            ':' => {
                self.i += 1;
                self.open("(?:")
            }
            '#' => {
                let close = self.chars[self.i..]
                    .iter()
                    .position(|&c| c == ')')
                    .ok_or_else(|| py("missing ), unterminated comment"))?;
                self.i += close + 1;
                self.global_flags_ok = flags_ok;
                Ok(())
            }
            'P' => {
                self.i += 1;
                match self.peek() {
                    Some('<') => {
                        self.i += 1;
                        let len = self.chars[self.i..]
                            .iter()
                            .position(|&c| c == '>')
                            .ok_or_else(|| py("missing >, unterminated name"))?;
                        let name: String = self.chars[self.i..self.i + len].iter().collect();
                        if !is_identifier(&name) {
                            return Err(py(format!("bad character in group name {name:?}")));
                        }
                        self.i += len + 1;
                        self.groups += 1;
                        self.open("(")
                    }
                    Some('=') => Err(unsupported("back-references")),
                    _ => Err(py("unknown extension ?P")),
                }
            }
            '=' | '!' => Err(unsupported("look-ahead")),
            '<' if matches!(self.peek_at(1), Some('=' | '!')) => Err(unsupported("look-behind")),
            '>' => Err(unsupported("atomic groups")),
            '(' => Err(unsupported("conditional groups")),
            _ => self.flags(flags_ok),
        }
    }

    fn open(&mut self, s: &str) -> Result<(), Reject> {
        self.out.push_str(s);
        self.depth += 1;
        self.prev = Prev::Nothing;
        Ok(())
    }

    /// Inline flags `(?imsu)` at the start of the pattern, or scoped `(?i-m:...)`.
    fn flags(&mut self, flags_ok: bool) -> Result<(), Reject> {
        let mut on = String::new();
        let mut off = String::new();
        let mut turning_off = false;
        loop {
            let c = self.peek().ok_or_else(|| py("missing flag"))?;
            self.i += 1;
            match c {
                'L' => {
                    return Err(py(
                        "bad inline flags: cannot use 'L' flag with a str pattern",
                    ));
                }
                'a' => return Err(py("ASCII and UNICODE flags are incompatible")),
                'x' => return Err(unsupported("verbose mode")),
                'u' if turning_off => return Err(py("bad inline flags: cannot turn off flag 'u'")),
                'i' | 'm' | 's' | 'u' => if turning_off { &mut off } else { &mut on }.push(c),
                '-' if !turning_off => turning_off = true,
                ':' if !on.is_empty() || !off.is_empty() => {
                    if on.chars().any(|c| off.contains(c)) {
                        return Err(py("bad inline flags: flag turned on and off"));
                    }
                    let on: String = on.chars().filter(|&c| c != 'u').collect();
                    let spelled = match (on.is_empty(), off.is_empty()) {
                        (true, true) => "(?:".to_owned(),
                        (_, true) => format!("(?{on}:"),
                        _ => format!("(?{on}-{off}:"),
                    };
                    return self.open(&spelled);
                }
                ')' if !on.is_empty() && !turning_off => {
                    // Global flags: Python takes them only at the very start.
                    if !flags_ok {
                        return Err(py("global flags not at the start of the expression"));
                    }
                    self.global_flags_ok = true;
                    let on: String = on.chars().filter(|&c| c != 'u').collect();
                    if !on.is_empty() {
                        self.out.push_str(&format!("(?{on})"));
                    }
                    return Ok(());
                }
                _ => return Err(py(format!("unknown extension ?{on}{c}"))),
            }
        }
    }
}

/// Why a pattern cannot be translated.
#[derive(Debug)]
enum Reject {
    /// Python's `re` rejects it, for this reason (Python's words).
    Python(String),
    /// It uses syntax the `regex` crate has no way to express.
    Unsupported(&'static str),
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Python(reason) => write!(f, "Python's re rejects it ({reason})"),
            Reject::Unsupported(what) => {
                write!(f, "it uses {what}, which the regex crate cannot express")
            }
        }
    }
}

fn py(reason: impl Into<String>) -> Reject {
    Reject::Python(reason.into())
}

fn unsupported(what: &'static str) -> Reject {
    Reject::Unsupported(what)
}

/// Python identifiers, near enough for group names.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// Appends `c` as a literal: meta characters escaped, control characters in hex, other
/// characters as they are (so that NFD normalization of the translation decomposes them).
fn push_literal(out: &mut String, c: char) {
    if c.is_control() {
        push_hex(out, c);
    } else {
        out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
    }
}

/// Appends `c` in hex, which NFD normalization of the translation leaves whole.
fn push_hex(out: &mut String, c: char) {
    out.push_str(&format!(r"\x{{{:X}}}", u32::from(c)));
}

/// Parses a Python repetition `{m}`, `{m,}`, `{,n}`, `{,}` or `{m,n}` from just after its
/// `{`: the `regex` crate's spelling, how many characters it used and whether its minimum
/// exceeds its maximum, or `None` when the `{` is a literal.
fn repetition(rest: &[char]) -> Option<(String, usize, bool)> {
    let digits = |from: usize| {
        rest[from..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
    };
    let lo = digits(0);
    let mut used = lo.len();
    let hi = if rest.get(used) == Some(&',') {
        used += 1;
        let hi = digits(used);
        used += hi.len();
        Some(hi)
    } else {
        None
    };
    if rest.get(used) != Some(&'}') || (lo.is_empty() && hi.is_none()) {
        return None;
    }
    used += 1;
    let lo = if lo.is_empty() { "0".to_owned() } else { lo };
    let (rewritten, inverted) = match hi {
        None => (format!("{{{lo}}}"), false),
        Some(hi) if hi.is_empty() => (format!("{{{lo},}}"), false),
        Some(hi) => {
            let inverted =
                matches!((lo.parse::<u64>(), hi.parse::<u64>()), (Ok(l), Ok(h)) if l > h);
            (format!("{{{lo},{hi}}}"), inverted)
        }
    };
    Some((rewritten, used, inverted))
}
