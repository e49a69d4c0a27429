//! The published API description: `/openapi.json` (and api-ref, which is checked against the
//! same document) changes only on purpose. A change of any path, parameter, schema or status
//! fails this test until the snapshot is reviewed and updated
//! (`INSTA_UPDATE=always cargo test -p kerbside-tests --test integration openapi::`, then
//! read the diff of `tests/integration/snapshots/`).

#[test]
fn the_openapi_document_changes_only_on_purpose() {
    let doc = serde_json::to_value(kerbside::api::openapi()).expect("the document serialises");
    insta::assert_json_snapshot!("openapi_document", doc);
}
