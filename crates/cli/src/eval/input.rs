//! The evaluation inputs: a pairs file (`path1,path2,same`) and a labels file
//! (`path,label[,attack_type,...]`), both CSV with a header line and paths relative to a root
//! folder. Every malformed line is a typed error that names its line number.

use std::path::Path;

/// A malformed input file; `line` counts from 1 like an editor does.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("the file is empty: a header line is expected ({expected})")]
    MissingHeader { expected: &'static str },
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the file holds a header but no rows")]
    NoRows,
}

/// One labelled verification pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub path1: String,
    pub path2: String,
    pub same: bool,
}

/// One labelled liveness image.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledImage {
    pub path: String,
    pub is_attack: bool,
    /// `none` for genuine images; the attack type column for attacks (`spoof` when absent).
    pub attack_type: String,
}

/// Reads a whole input file into memory (these files are small: one line per pair or image).
pub fn read_text(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|error| InputError::Read {
        path: path.display().to_string(),
        message: error.to_string(),
    })
}

/// The non-blank lines with their 1-based line numbers, fields split on commas and trimmed
/// (surrounding double quotes are dropped; fields with embedded commas are not supported).
fn rows(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return None;
        }
        let fields = line
            .split(',')
            .map(|field| field.trim().trim_matches('"'))
            .collect();
        Some((index + 1, fields))
    })
}

fn line_error(line: usize, message: impl Into<String>) -> InputError {
    InputError::Line {
        line,
        message: message.into(),
    }
}

/// Finds the column called `name` in the header (case-insensitive).
fn column(header: &[&str], name: &str) -> Option<usize> {
    header
        .iter()
        .position(|field| field.eq_ignore_ascii_case(name))
}

fn required_column(header: &[&str], name: &str, header_line: usize) -> Result<usize, InputError> {
    column(header, name).ok_or_else(|| {
        line_error(
            header_line,
            format!(
                "the header has no `{name}` column (found: {})",
                header.join(",")
            ),
        )
    })
}

fn field<'a>(
    fields: &[&'a str],
    index: usize,
    name: &str,
    line: usize,
) -> Result<&'a str, InputError> {
    match fields.get(index) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(line_error(line, format!("`{name}` is missing"))),
    }
}

/// Parses a pairs file: header `path1,path2,same`, `same` is 1/0 (or true/false).
pub fn parse_pairs(text: &str) -> Result<Vec<Pair>, InputError> {
    let mut rows = rows(text);
    let (header_line, header) = rows.next().ok_or(InputError::MissingHeader {
        expected: "path1,path2,same",
    })?;
    let path1 = required_column(&header, "path1", header_line)?;
    let path2 = required_column(&header, "path2", header_line)?;
    let same = required_column(&header, "same", header_line)?;
    let mut pairs = Vec::new();
    for (line, fields) in rows {
        let same = match field(&fields, same, "same", line)? {
            "1" | "true" | "True" | "TRUE" => true,
            "0" | "false" | "False" | "FALSE" => false,
            other => {
                return Err(line_error(
                    line,
                    format!("`same` must be 1 or 0, got `{other}`"),
                ));
            }
        };
        pairs.push(Pair {
            path1: field(&fields, path1, "path1", line)?.to_owned(),
            path2: field(&fields, path2, "path2", line)?.to_owned(),
            same,
        });
    }
    if pairs.is_empty() {
        return Err(InputError::NoRows);
    }
    Ok(pairs)
}

/// Parses a labels file: header with `path` and `label` (live | spoof) and optionally
/// `attack_type`; other columns are ignored.
pub fn parse_labels(text: &str) -> Result<Vec<LabelledImage>, InputError> {
    let mut rows = rows(text);
    let (header_line, header) = rows.next().ok_or(InputError::MissingHeader {
        expected: "path,label[,attack_type]",
    })?;
    let path = required_column(&header, "path", header_line)?;
    let label = required_column(&header, "label", header_line)?;
    let attack_type = column(&header, "attack_type");
    let mut images = Vec::new();
    for (line, fields) in rows {
        let is_attack = match field(&fields, label, "label", line)?
            .to_ascii_lowercase()
            .as_str()
        {
            "live" => false,
            "spoof" => true,
            other => {
                return Err(line_error(
                    line,
                    format!("`label` must be live or spoof, got `{other}`"),
                ));
            }
        };
        let attack_type = if !is_attack {
            "none".to_owned()
        } else {
            attack_type
                .and_then(|index| fields.get(index))
                .filter(|value| !value.is_empty() && !value.eq_ignore_ascii_case("none"))
                .map_or_else(|| "spoof".to_owned(), |value| (*value).to_owned())
        };
        images.push(LabelledImage {
            path: field(&fields, path, "path", line)?.to_owned(),
            is_attack,
            attack_type,
        });
    }
    if images.is_empty() {
        return Err(InputError::NoRows);
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_with_blank_lines_and_crlf() {
        let pairs = parse_pairs("path1,path2,same\r\na/1.jpg,a/2.jpg,1\r\n\r\na/1.jpg,b/1.jpg,0\n")
            .unwrap();
        assert_eq!(pairs.len(), 2);
        assert!(pairs[0].same);
        assert!(!pairs[1].same);
        assert_eq!(pairs[1].path2, "b/1.jpg");
    }

    #[test]
    fn pair_errors_name_the_line() {
        let error = parse_pairs("path1,path2,same\na,b,1\na,b,yes\n").unwrap_err();
        assert_eq!(
            error,
            InputError::Line {
                line: 3,
                message: "`same` must be 1 or 0, got `yes`".into()
            }
        );
        let error = parse_pairs("path1,path2,same\n\na,,1\n").unwrap_err();
        assert!(matches!(error, InputError::Line { line: 3, .. }), "{error}");
        let error = parse_pairs("path1,path2\na,b\n").unwrap_err();
        assert!(matches!(error, InputError::Line { line: 1, .. }), "{error}");
        assert_eq!(
            parse_pairs(""),
            Err(InputError::MissingHeader {
                expected: "path1,path2,same"
            })
        );
        assert_eq!(parse_pairs("path1,path2,same\n"), Err(InputError::NoRows));
    }

    #[test]
    fn parses_labels_and_attack_types() {
        let images = parse_labels(
            "path,label,attack_type,subject\nl.jpg,live,none,1\np.jpg,spoof,print_photo,1\ns.jpg,SPOOF,,2\n",
        )
        .unwrap();
        assert_eq!(images[0].attack_type, "none");
        assert!(!images[0].is_attack);
        assert_eq!(images[1].attack_type, "print_photo");
        assert_eq!(images[2].attack_type, "spoof");
        let without_type = parse_labels("path,label\nx.jpg,spoof\n").unwrap();
        assert_eq!(without_type[0].attack_type, "spoof");
    }

    #[test]
    fn label_errors_name_the_line() {
        let error = parse_labels("path,label\nx.jpg,live\ny.jpg,fake\n").unwrap_err();
        assert!(matches!(error, InputError::Line { line: 3, .. }), "{error}");
        let error = parse_labels("file,label\nx.jpg,live\n").unwrap_err();
        assert!(matches!(error, InputError::Line { line: 1, .. }), "{error}");
    }
}
