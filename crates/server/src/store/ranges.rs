//! The HTTP rules every [`super::AudioStore::serve`] follows, whatever holds the bytes: which part of
//! a file a request gets (Range, If-Range), the status and headers that say so, and the type and
//! name a download carries. The local store lets tower-http's `ServeFile` read its files and fixes
//! its answer with [`if_range_matches`] and [`label`]; a remote store builds the whole answer here,
//! with the same range parser `ServeFile` uses (`http-range-header`), so both agree byte for byte.

use std::ops::RangeInclusive;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use musicgen::audio::Format;
use uuid::Uuid;

/// The part of a file a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Extent {
    Whole,
    /// One range, both ends included.
    Part(RangeInclusive<u64>),
    /// A range that is malformed or lies past the end: 416.
    Unsatisfiable,
}

/// What a GET of a file of `size` bytes, whose validators (`ETag`, `Last-Modified`) are in
/// `validators`, gets.
pub(super) fn extent(request: &HeaderMap, size: u64, validators: &HeaderMap) -> Extent {
    let Some(range) = request.get(header::RANGE).and_then(|value| value.to_str().ok()) else {
        return Extent::Whole;
    };
    // A range of a file that changed since the client's copy would splice two files.
    if request.get(header::IF_RANGE).is_some_and(|wanted| !if_range_matches(wanted, validators)) {
        return Extent::Whole;
    }
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return Extent::Unsatisfiable;
    };
    // Several ranges get the whole file (a 200, which RFC 9110 allows) rather than a multipart body.
    if parsed.ranges.len() > 1 {
        return Extent::Whole;
    }
    match parsed.validate(size) {
        Ok(mut ranges) => ranges.pop().map_or(Extent::Unsatisfiable, Extent::Part),
        Err(_) => Extent::Unsatisfiable,
    }
}

/// RFC 9110 13.1.5: an entity tag matches by strong comparison (a weak one never does); a date
/// matches when it is the file's `Last-Modified`.
pub(super) fn if_range_matches(wanted: &HeaderValue, validators: &HeaderMap) -> bool {
    let wanted = wanted.as_bytes();
    if wanted.starts_with(b"W/") {
        return false;
    }
    let validator = if wanted.starts_with(b"\"") { header::ETAG } else { header::LAST_MODIFIED };
    validators.get(validator).is_some_and(|ours| ours.as_bytes() == wanted && !ours.as_bytes().starts_with(b"W/"))
}

/// The validators of a stored object as response headers: its entity tag quoted as RFC 9110 wants
/// it (some stores hand it over bare), its modification time as an HTTP date.
pub(super) fn validators(etag: Option<&str>, modified: DateTime<Utc>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(etag) = etag {
        let quoted =
            if etag.starts_with('"') || etag.starts_with("W/") { etag.to_string() } else { format!("\"{etag}\"") };
        if let Ok(value) = HeaderValue::from_str(&quoted) {
            headers.insert(header::ETAG, value);
        }
    }
    let date = modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(value) = HeaderValue::from_str(&date) {
        headers.insert(header::LAST_MODIFIED, value);
    }
    headers
}

/// The answer to a GET or HEAD for `extent` of a file of `size` bytes, as `ServeFile` answers one:
/// `body` holds the bytes of the extent (empty for HEAD and 416).
pub(super) fn respond(extent: &Extent, size: u64, validators: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.extend(validators);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let content_range = |value: String| HeaderValue::from_str(&value).expect("digits and ASCII");
    match extent {
        Extent::Whole => {
            headers.insert(header::CONTENT_LENGTH, size.into());
        }
        Extent::Part(range) => {
            headers.insert(header::CONTENT_LENGTH, (range.end() - range.start() + 1).into());
            let value = format!("bytes {}-{}/{size}", range.start(), range.end());
            headers.insert(header::CONTENT_RANGE, content_range(value));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        Extent::Unsatisfiable => {
            headers.insert(header::CONTENT_RANGE, content_range(format!("bytes */{size}")));
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
        }
    }
    response
}

/// `ServeFile`'s answer to a method other than GET and HEAD.
pub(super) fn method_not_allowed() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
    response
}

/// Whether a request's method is one a file answers.
pub(super) fn readable(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The type and the download name of the audio of `id` in `format`: the format's type, not a guess
/// from a file name (`<uuid>.wav24` has none).
pub(super) fn label(response: &mut Response, id: Uuid, format: Format) {
    if response.status().is_success() {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.mime_type()));
    }
    let disposition = format!("inline; filename=\"dgx-music-{id}.{}\"", format.extension());
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap())).collect()
    }

    #[test]
    fn a_request_gets_one_range_the_whole_file_or_a_416() {
        let ours = validators(Some("abc"), DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        assert_eq!(ours[header::ETAG], "\"abc\"");
        assert_eq!(ours[header::LAST_MODIFIED], "Tue, 14 Nov 2023 22:13:20 GMT");
        let cases = [
            (request(&[]), Extent::Whole),
            (request(&[(header::RANGE, "bytes=0-3")]), Extent::Part(0..=3)),
            (request(&[(header::RANGE, "bytes=-4")]), Extent::Part(96..=99)),
            (request(&[(header::RANGE, "bytes=90-")]), Extent::Part(90..=99)),
            (request(&[(header::RANGE, "bytes=0-3, 8-11")]), Extent::Whole),
            (request(&[(header::RANGE, "bytes=100-")]), Extent::Unsatisfiable),
            (request(&[(header::RANGE, "pages=1")]), Extent::Unsatisfiable),
            (request(&[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, "\"abc\"")]), Extent::Part(0..=3)),
            (request(&[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, "\"old\"")]), Extent::Whole),
            (request(&[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, "W/\"abc\"")]), Extent::Whole),
            (
                request(&[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, "Tue, 14 Nov 2023 22:13:20 GMT")]),
                Extent::Part(0..=3),
            ),
        ];
        for (headers, expected) in cases {
            assert_eq!(extent(&headers, 100, &ours), expected, "{headers:?}");
        }
    }
}
