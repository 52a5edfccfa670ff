//! CSV import end to end against a real `xeno serve`: mapping, type coercion,
//! the error report, duplicates, upsert by email, progress as server-sent
//! events, cancel, every kind of bad file, and the `xeno import` / `xeno
//! export` commands.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ADMIN_API_KEY, ORG, Server, poll_until};
use serde_json::{Value, json};

/// A multipart body with an `options` part (when given) and a `file` part.
fn multipart(options: Option<&Value>, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "xenoTestBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    if let Some(options) = options {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"options\"\r\nContent-Type: application/json\r\n\r\n{options}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"customers.csv\"\r\nContent-Type: text/csv\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Uploads and waits for the job to finish; returns the final job.
fn import(server: &Server, options: Option<&Value>, file: &[u8]) -> Value {
    let (content_type, body) = multipart(options, file);
    let job = server
        .admin_post_bytes("/imports", &content_type, &body)
        .expect(202, "POST /imports");
    let id = job["id"].as_str().expect("a job id").to_string();
    poll_until("the import to finish", Duration::from_secs(60), || {
        let job = server
            .admin_get(&format!("/imports/{id}"))
            .expect(200, "GET import");
        match job["status"].as_str() {
            Some("completed" | "failed" | "cancelled") => Ok(job),
            _ => Err(job.to_string()),
        }
    })
}

fn report(server: &Server, job: &Value) -> Vec<Vec<String>> {
    let reply = server.admin_get(&format!("/imports/{}/errors", job["id"].as_str().unwrap()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut lines = reply.body.lines();
    assert_eq!(lines.next(), Some("row,line,column,reason,value"));
    lines
        .map(|l| {
            // The fields tested here hold no quotes or commas except `reason`,
            // which is quoted when it has a comma.
            let mut fields = Vec::new();
            let mut rest = l;
            while !rest.is_empty() {
                if let Some(stripped) = rest.strip_prefix('"') {
                    let end = stripped.find("\",").unwrap_or(stripped.len() - 1);
                    fields.push(stripped[..end].to_string());
                    rest = stripped.get(end + 2..).unwrap_or("");
                } else {
                    let end = rest.find(',').unwrap_or(rest.len());
                    fields.push(rest[..end].to_string());
                    rest = rest.get(end + 1..).unwrap_or("");
                }
            }
            if l.ends_with(',') {
                fields.push(String::new());
            }
            fields
        })
        .collect()
}

fn number(job: &Value, key: &str) -> u64 {
    job[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {job}"))
}

#[test]
fn a_crm_export_lands_with_types_mapping_duplicates_and_an_error_report() {
    let server = Server::start();
    for (field, ty) in [("lifetime_spend", "number"), ("city", "string")] {
        server
            .admin_call(
                "PUT",
                &format!("/fields/{field}"),
                Some(&json!({"type": ty})),
            )
            .expect(200, "declare a field");
    }
    let segment = server.create_segment("vip", "lifetime_spend > 1000 and city = \"Paris\"");
    let csv = "\
Customer ID,E-mail,Full Name,Spend,City,Zip,Signed Up,Newsletter,Notes
c1,ann@example.com,Ann Arbor,1500.50,Paris,02134,2024-03-01,yes,first
c2,bo@example.com,Bo Diddley,200,Lyon,69001,2024-03-02,no,
c3,not-an-email,Cy,50,Paris,75001,2024-03-03,yes,
c4,di@example.com,Di,12x,Paris,75002,2024-03-04,no,
,ed@example.com,Ed,10,Paris,75003,2024-03-05,no,
c1,ann@example.com,Ann Arbor,2500,Paris,02134,2024-03-01,yes,updated
c5,fa@example.com,Fa,3000,Paris,75004,2024-03-06,yes,\"says \"\"hi\"\", twice\"
c6,short,row
";
    let options = json!({"mapping": {"Notes": null}, "types": {"newsletter": "bool"}});
    let job = import(&server, Some(&options), csv.as_bytes());
    assert_eq!(job["status"], json!("completed"), "{job}");
    assert_eq!(number(&job, "rows_read"), 8, "{job}");
    assert_eq!(number(&job, "rows_imported"), 4, "c1 twice, c2, c5: {job}");
    assert_eq!(number(&job, "rows_failed"), 4, "{job}");
    assert_eq!(number(&job, "duplicates"), 1, "{job}");
    assert_eq!(job["dialect"]["delimiter"], json!(","), "{job}");

    let errors = report(&server, &job);
    let rows: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e[0].as_str(), e[2].as_str()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("3", "E-mail"),
            ("4", "Spend"),
            ("5", "Customer ID"),
            ("8", "")
        ],
        "row and column of each problem: {errors:?}"
    );
    assert!(errors[1][3].contains("not a number"), "{errors:?}");
    assert_eq!(errors[1][4], "12x", "the offending value: {errors:?}");
    assert!(errors[3][3].contains("fields"), "ragged row: {errors:?}");

    // Mapped, typed, the last duplicate wins, skipped columns are absent.
    let c1 = server.customer("c1").unwrap();
    assert_eq!(c1["attributes"]["email"], json!("ann@example.com"), "{c1}");
    assert_eq!(c1["attributes"]["name"], json!("Ann Arbor"), "{c1}");
    assert_eq!(
        c1["attributes"]["lifetime_spend"],
        json!(2500.0),
        "last row wins: {c1}"
    );
    assert_eq!(
        c1["attributes"]["postal_code"],
        json!("02134"),
        "zip stays text: {c1}"
    );
    assert_eq!(
        c1["attributes"]["created_at"],
        json!("2024-03-01T00:00:00Z"),
        "{c1}"
    );
    assert_eq!(c1["attributes"]["newsletter"], json!(true), "{c1}");
    assert!(c1["attributes"].get("notes").is_none(), "skipped: {c1}");
    let c5 = server.customer("c5").unwrap();
    assert_eq!(c5["attributes"]["lifetime_spend"], json!(3000.0));
    assert_eq!(
        server.admin_get("/customers/c3").status,
        404,
        "a bad row lands nothing"
    );

    // Segments follow the imported rows.
    poll_until("vip members", Duration::from_secs(10), || {
        let members = server
            .admin_get(&format!("/segments/{segment}/members"))
            .expect(200, "members");
        if members["items"] == json!(["c1", "c5"]) || members["items"] == json!(["c5", "c1"]) {
            Ok(())
        } else {
            Err(members.to_string())
        }
    });

    // Progress as server-sent events: a finished job says `done` at once.
    let events = server.admin_get(&format!("/imports/{}/events", job["id"].as_str().unwrap()));
    assert_eq!(events.status, 200);
    assert!(events.body.contains("event: done"), "{}", events.body);
    assert!(
        events.body.contains("\"rows_imported\":4"),
        "{}",
        events.body
    );

    let audit = server
        .admin_get("/audit?action=import.completed")
        .expect(200, "audit");
    assert_eq!(
        audit["items"][0]["summary"]["rows_imported"],
        json!(4),
        "{audit}"
    );
    let list = server.admin_get("/imports").expect(200, "imports");
    assert_eq!(list["items"][0]["id"], job["id"]);

    // A second file upserts by email into the existing customers.
    let update = "email;plan\nANN@example.com;gold\nnew@example.com;free\nNew@Example.com;trial\n";
    let job = import(
        &server,
        Some(&json!({"upsert_by": "email"})),
        update.as_bytes(),
    );
    assert_eq!(job["status"], json!("completed"), "{job}");
    assert_eq!(job["dialect"]["delimiter"], json!(";"), "detected: {job}");
    assert_eq!(number(&job, "rows_imported"), 3, "{job}");
    assert_eq!(number(&job, "duplicates"), 1, "one new email twice: {job}");
    let c1 = server.customer("c1").unwrap();
    assert_eq!(
        c1["attributes"]["plan"],
        json!("gold"),
        "matched by email: {c1}"
    );
    assert_eq!(
        c1["attributes"]["lifetime_spend"],
        json!(2500.0),
        "other values kept: {c1}"
    );
    assert!(
        server.customer("new@example.com").is_ok(),
        "a new email is a new customer"
    );
    let new = server.customer("new@example.com").unwrap();
    assert_eq!(
        new["attributes"]["plan"],
        json!("trial"),
        "the last row wins: {new}"
    );
    let all = server
        .admin_get("/customers?q=new%40&limit=10")
        .expect(200, "search");
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        1,
        "one customer: {all}"
    );
}

#[test]
fn bad_files_get_a_clear_result_and_valid_rows_still_land() {
    let server = Server::start();
    let failed = |file: &[u8], why: &str| {
        let job = import(&server, None, file);
        assert_eq!(job["status"], json!("failed"), "{why}: {job}");
        let reason = job["error"].as_str().unwrap_or_default().to_string();
        assert!(!reason.is_empty(), "{why}: a reason: {job}");
        reason
    };
    assert!(failed(b"", "empty").contains("empty"));
    assert!(failed(b"id,email\n", "header only").contains("no rows"));
    assert!(failed(b"id,email,email\na,b@c.de,x@y.de\n", "duplicate headers").contains("twice"));
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend(std::iter::repeat_n(0u8, 4000));
    assert!(
        failed(&png, "binary").contains("not text") || failed(&png, "binary").contains("binary")
    );
    assert!(failed(b"name,city\nann,paris\n", "no key column").contains("id"));

    // Latin-1 is detected and decoded.
    let job = import(&server, None, b"id,city\nl1,Z\xfcrich\nl2,S\xe3o Paulo\n");
    assert_eq!(job["status"], json!("completed"), "{job}");
    assert_eq!(job["dialect"]["encoding"], json!("latin-1"), "{job}");
    assert_eq!(
        server.customer("l1").unwrap()["attributes"]["city"],
        json!("Zürich")
    );

    // Declared UTF-8 but not: those rows are reported, the others land.
    let options = json!({"encoding": "utf-8"});
    let job = import(&server, Some(&options), b"id,city\nu1,Z\xfcrich\nu2,Oslo\n");
    assert_eq!(job["status"], json!("completed"), "{job}");
    assert_eq!(
        (number(&job, "rows_imported"), number(&job, "rows_failed")),
        (1, 1),
        "{job}"
    );
    assert!(report(&server, &job)[0][3].contains("UTF-8"));

    // An unclosed quote swallows nothing after its own line.
    let job = import(
        &server,
        None,
        b"id,city\nq1,Rome\nq2,\"Mil\nq3,Turin\nq4,Bari\n",
    );
    assert_eq!(job["status"], json!("completed"), "{job}");
    let imported: Vec<bool> = ["q1", "q3", "q4"]
        .iter()
        .map(|c| server.customer(c).is_ok())
        .collect();
    assert_eq!(
        imported,
        vec![true, true, true],
        "rows around the broken quote land: {job}"
    );
    let errors = report(&server, &job);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0][3].contains("quote"), "{errors:?}");
    assert_eq!(errors[0][1], "3", "the line it opened on: {errors:?}");

    // A 5 MB field: its row is reported, the rest land.
    let mut big = b"id,bio\nb1,short\nb2,".to_vec();
    big.extend(std::iter::repeat_n(b'x', 5 * 1024 * 1024));
    big.extend_from_slice(b"\nb3,also short\n");
    let job = import(&server, None, &big);
    assert_eq!(job["status"], json!("completed"), "{job}");
    assert_eq!(
        (number(&job, "rows_imported"), number(&job, "rows_failed")),
        (2, 1),
        "{job}"
    );
    assert!(server.customer("b3").is_ok());
    let errors = report(&server, &job);
    assert_eq!(errors[0][0], "2", "{errors:?}");
    assert!(
        errors[0][4].len() <= 200,
        "the report does not copy the field"
    );

    // Bad requests are refused before a job starts.
    let (content_type, body) = multipart(Some(&json!({"delimiter": "ab"})), b"id\n1\n");
    let reply = server.admin_post_bytes("/imports", &content_type, &body);
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(
        reply.json()["errors"][0]["pointer"],
        json!("/options/delimiter")
    );
    let (content_type, body) = multipart(
        Some(&json!({"mapping": {"Spend": "total_spend"}})),
        b"id,Spend\n1,2\n",
    );
    let reply = server.admin_post_bytes("/imports", &content_type, &body);
    assert_eq!(
        reply.status, 422,
        "a computed trait is no target: {}",
        reply.body
    );
    assert!(reply.body.contains("lifetime_spend"), "{}", reply.body);
    let reply = server.admin_post_bytes("/imports", "text/csv", b"id\n1\n");
    assert_eq!(reply.status, 400, "not multipart: {}", reply.body);
    let (content_type, body) = multipart(Some(&json!({"mapping": {}})), b"");
    let without_file = String::from_utf8_lossy(&body).replace("name=\"file\"", "name=\"other\"");
    let reply = server.admin_post_bytes("/imports", &content_type, without_file.as_bytes());
    assert_eq!(reply.status, 400, "{}", reply.body);
}

#[test]
fn a_large_import_can_be_cancelled_and_keeps_what_landed() {
    let server = Server::start();
    let mut csv = String::from("id,score\n");
    for i in 0..1_000_000 {
        csv.push_str(&format!("k{i},{i}\n"));
    }
    let (content_type, body) = multipart(None, csv.as_bytes());
    let job = server
        .admin_post_bytes("/imports", &content_type, &body)
        .expect(202, "POST /imports");
    let id = job["id"].as_str().unwrap().to_string();
    server
        .admin_post(&format!("/imports/{id}/cancel"), &json!({}))
        .expect(202, "cancel");
    let job = poll_until("the cancel", Duration::from_secs(60), || {
        let job = server
            .admin_get(&format!("/imports/{id}"))
            .expect(200, "GET import");
        match job["status"].as_str() {
            Some("cancelled") => Ok(job),
            Some("running" | "queued") => Err(job.to_string()),
            _ => panic!("the job was not cancelled: {job}"),
        }
    });
    let imported = number(&job, "rows_imported");
    assert!(imported < 1_000_000, "{job}");
    // The job's summary follows its status into the activity feed.
    let audit = poll_until("the summary in the feed", Duration::from_secs(10), || {
        let audit = server
            .admin_get("/audit?action=import.cancelled")
            .expect(200, "audit");
        match audit["items"].as_array().unwrap().len() {
            0 => Err(audit.to_string()),
            _ => Ok(audit),
        }
    });
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit["items"][0]["summary"]["status"], "cancelled");
    let requested = server
        .admin_get("/audit?action=import.cancel_requested")
        .expect(200, "audit");
    assert_eq!(
        requested["items"][0]["target"],
        format!("/imports/{id}/cancel"),
        "{requested}"
    );
}

#[test]
fn the_cli_imports_with_progress_and_exports_a_segment() {
    let server = Server::start();
    server
        .admin_call("PUT", "/fields/tier", Some(&json!({"type": "string"})))
        .expect(200, "declare tier");
    let segment = server.create_segment("gold", "tier = \"gold\"");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("customers.csv");
    let mut csv = String::from("Customer,Tier,Spend\n");
    for i in 0..3000 {
        let tier = if i % 3 == 0 { "gold" } else { "silver" };
        csv.push_str(&format!("m{i},{tier},{i}\n"));
    }
    csv.push_str("m-bad,gold,lots\n");
    std::fs::write(&file, csv).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_xeno"))
        .args([
            "import",
            file.to_str().unwrap(),
            "--org",
            ORG,
            "--server",
            &server.base_url,
        ])
        .args([
            "--map",
            "id=Customer",
            "--map",
            "tier=Tier",
            "--map",
            "lifetime_spend=Spend",
        ])
        .env("XENO_API_KEY", ADMIN_API_KEY)
        .output()
        .expect("run xeno import");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "xeno import failed: {stderr}");
    assert!(stderr.contains("imported 3000 rows"), "{stderr}");
    assert!(stderr.contains("1 failed"), "{stderr}");
    let report = dir.path().join("customers.csv.errors.csv");
    assert!(
        stderr.contains(report.to_str().unwrap()),
        "names the report: {stderr}"
    );
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("m-bad") || text.contains("lots"), "{text}");

    poll_until("the gold members", Duration::from_secs(10), || {
        let output = Command::new(env!("CARGO_BIN_EXE_xeno"))
            .args([
                "export",
                "--org",
                ORG,
                "--server",
                &server.base_url,
                "--segment",
                &segment,
            ])
            .env("XENO_API_KEY", ADMIN_API_KEY)
            .output()
            .expect("run xeno export");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let rows = stdout.lines().count();
        if output.status.success() && rows == 1001 {
            Ok(())
        } else {
            Err(format!(
                "{} rows; {}",
                rows,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });

    let no_key = Command::new(env!("CARGO_BIN_EXE_xeno"))
        .args([
            "import",
            file.to_str().unwrap(),
            "--org",
            ORG,
            "--server",
            &server.base_url,
        ])
        .env_remove("XENO_API_KEY")
        .output()
        .unwrap();
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("XENO_API_KEY"));
}
