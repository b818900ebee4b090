//! Request fields every model service reads the same way.

use faceproof_proto::common::v1::SearchMode;

use crate::error::ServiceError;

/// The pipeline a request asks for: FAST when the caller does not choose (the cheaper one);
/// an unknown value is `invalid_search_mode` on `search_mode`.
pub fn search_mode(value: i32) -> Result<SearchMode, ServiceError> {
    match SearchMode::try_from(value) {
        Ok(SearchMode::Unspecified) | Ok(SearchMode::Fast) => Ok(SearchMode::Fast),
        Ok(SearchMode::Accurate) => Ok(SearchMode::Accurate),
        Err(_) => Err(ServiceError::invalid_field(
            "invalid_search_mode",
            "search_mode",
            format!("unknown search mode {value}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_is_fast_and_unknown_is_refused() {
        assert_eq!(search_mode(0).unwrap(), SearchMode::Fast);
        assert_eq!(
            search_mode(SearchMode::Accurate.into()).unwrap(),
            SearchMode::Accurate
        );
        let error = search_mode(9).unwrap_err();
        assert_eq!(error.reason, "invalid_search_mode");
        assert_eq!(error.violations[0].field, "search_mode");
    }
}
