//! The admin status page, rendered by a real browser (headless Chromium), names every backend
//! and shows their health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Binary, dump_dom, loopback};
use imapproxy_testkit::Dovecot;

#[test]
fn status_page_renders_in_chromium_and_names_every_backend() {
    let dovecot = Dovecot::shared();
    let [imap, admin, dead] = [(); 3].map(|()| loopback());
    let config = format!(
        r#"
[[listeners]]
addr = "{imap}"
tls = "none"
allow_plaintext_auth = true

[[backends]]
name = "mail-alpha"
addr = "{alive}"

[[backends]]
name = "mail-beta"
addr = "{dead}"

[health]
interval = "200ms"
fall = 1

[admin]
addr = "{admin}"
"#,
        alive = dovecot.imap_addr()
    );
    let proxy = Binary::start(&config, &[admin]);
    // Let a few health rounds mark the dead backend down.
    std::thread::sleep(Duration::from_millis(800));

    let dom = dump_dom(admin, Duration::from_secs(1));
    drop(proxy);
    assert!(dom.contains("<h1>imapproxy</h1>"), "not rendered: {dom}");
    assert!(dom.contains("<td>mail-alpha</td>"), "{dom}");
    assert!(dom.contains("<td>mail-beta</td>"), "{dom}");
    assert!(
        dom.contains("<tr class=\"up\"><td>mail-alpha</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<tr class=\"down\"><td>mail-beta</td>"),
        "{dom}"
    );
}
