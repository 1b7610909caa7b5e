use super::config::redacted;
use super::*;

/// `bytes(range(32))`, base64.
const KEY32: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY: &str = "/registry/secrets/default/s1";
const PLAIN: &[u8] = br#"{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;

fn config(providers: &str) -> EncryptionConfig {
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
    );
    EncryptionConfig::parse(&text).unwrap()
}

fn secrets(config: &EncryptionConfig) -> Arc<Transformer> {
    config.transformer_for("", "secrets").unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn stored(prefix: &str, body_hex: &str) -> Vec<u8> {
    let mut v = prefix.as_bytes().to_vec();
    v.extend(hex(body_hex));
    v
}

#[test]
fn values_written_by_other_implementations_decrypt() {
    // Made with Python's `cryptography` (AES-CBC/PKCS#7, AES-GCM with the key as AAD), laid
    // out as kube-apiserver stores them.
    let t = secrets(&config(&format!(
        "  - aescbc:\n      keys: [{{name: key1, secret: {KEY32}}}]\n  - aesgcm:\n      keys: [{{name: key1, secret: {KEY32}}}]\n"
    )));
    let cbc = stored(
        "k8s:enc:aescbc:v1:key1:",
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeafda54e881eafae68f34aa2ddb00e56b52ebc8f04455a57c27e78aeee850c41f0287a4a7535609c48c0de9e74dbdbab3018af66c95ed00289fb479660eb4e37993",
    );
    assert_eq!(t.from_storage(KEY, &cbc).unwrap(), PLAIN);
    let gcm = stored(
        "k8s:enc:aesgcm:v1:key1:",
        "101112131415161718191a1b06dcf37f27ad1889e8266d7e7d1c1d71fb722a6f6fa3758b9cdb92062d2723b4228d7539d7c726b90b52d507f3d574262e9e3a0e4ce72c958f1d65fc170561715e6c4312",
    );
    assert_eq!(t.from_storage(KEY, &gcm).unwrap(), PLAIN);
    // AES-GCM binds the value to its key: moved elsewhere, it does not decrypt.
    assert!(matches!(
        t.from_storage("/registry/secrets/default/other", &gcm),
        Err(TransformError::Decrypt { .. })
    ));
    // Unprefixed data without identity listed.
    assert_eq!(
        t.from_storage(KEY, PLAIN),
        Err(TransformError::NoMatchingPrefix)
    );
}

#[test]
fn every_provider_round_trips_with_its_prefix() {
    for provider in ["aescbc", "aesgcm", "secretbox"] {
        let t = secrets(&config(&format!(
            "  - {provider}:\n      keys:\n      - name: key1\n        secret: {KEY32}\n"
        )));
        let value = t.to_storage(KEY, PLAIN).unwrap();
        let prefix = format!("k8s:enc:{provider}:v1:key1:");
        assert!(value.starts_with(prefix.as_bytes()), "{provider}");
        assert!(!value.windows(8).any(|w| w == b"password"), "{provider}");
        assert_eq!(t.from_storage(KEY, &value).unwrap(), PLAIN, "{provider}");
        // Two writes of the same value differ (random IV/nonce).
        assert_ne!(value, t.to_storage(KEY, PLAIN).unwrap(), "{provider}");
        // A flipped byte is refused (CBC has no authentication; its padding usually fails).
        if provider != "aescbc" {
            let mut bad = value.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(t.from_storage(KEY, &bad).is_err(), "{provider}");
        }
    }
    for size in [16, 24] {
        let key = base64::engine::general_purpose::STANDARD.encode(vec![7u8; size]);
        for provider in ["aescbc", "aesgcm"] {
            let t = secrets(&config(&format!(
                "  - {provider}:\n      keys: [{{name: k, secret: {key}}}]\n"
            )));
            let value = t.to_storage(KEY, PLAIN).unwrap();
            assert_eq!(t.from_storage(KEY, &value).unwrap(), PLAIN);
        }
    }
}

#[test]
fn rotation_reads_old_keys_and_writes_the_first() {
    let key2 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let old = secrets(&config(&format!(
        "  - aescbc:\n      keys: [{{name: key1, secret: {KEY32}}}]\n  - identity: {{}}\n"
    )));
    let new = secrets(&config(&format!(
        "  - secretbox:\n      keys: [{{name: key2, secret: {key2}}}]\n  - aescbc:\n      keys: [{{name: key1, secret: {KEY32}}}]\n  - identity: {{}}\n"
    )));
    let written_before = old.to_storage(KEY, PLAIN).unwrap();
    assert_eq!(new.from_storage(KEY, &written_before).unwrap(), PLAIN);
    // Plaintext from before encryption was turned on reads through identity.
    assert_eq!(new.from_storage(KEY, PLAIN).unwrap(), PLAIN);
    let rewritten = new.to_storage(KEY, PLAIN).unwrap();
    assert!(rewritten.starts_with(b"k8s:enc:secretbox:v1:key2:"));
    // The old configuration does not know key2.
    assert!(matches!(
        old.from_storage(KEY, &rewritten),
        Err(TransformError::EncryptedData)
    ));
    // Identity first: writes plaintext, still reads encrypted data.
    let off = secrets(&config(&format!(
        "  - identity: {{}}\n  - aescbc:\n      keys: [{{name: key1, secret: {KEY32}}}]\n"
    )));
    assert_eq!(off.to_storage(KEY, PLAIN).unwrap(), PLAIN);
    assert_eq!(off.from_storage(KEY, &written_before).unwrap(), PLAIN);
}

#[test]
fn resources_match_exactly_then_by_group_then_everything() {
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [events]\n  providers: [{{identity: {{}}}}]\n\
         - resources: [secrets, configmaps]\n  providers:\n  - aesgcm: {{keys: [{{name: a, secret: {KEY32}}}]}}\n\
         - resources: ['*.apps']\n  providers:\n  - aescbc: {{keys: [{{name: b, secret: {KEY32}}}]}}\n\
         - resources: ['*.*']\n  providers:\n  - secretbox: {{keys: [{{name: c, secret: {KEY32}}}]}}\n"
    );
    let c = EncryptionConfig::parse(&text).unwrap();
    let prefix_of = |g: &str, r: &str| {
        let t = c.transformer_for(g, r).unwrap();
        let v = t.to_storage("/k", b"x").unwrap();
        String::from_utf8_lossy(&v[..v.len().min(22)]).into_owned()
    };
    assert_eq!(prefix_of("", "events"), "x");
    assert!(prefix_of("", "configmaps").starts_with("k8s:enc:aesgcm:v1:a:"));
    assert!(prefix_of("apps", "deployments").starts_with("k8s:enc:aescbc:v1:b:"));
    assert!(prefix_of("", "pods").starts_with("k8s:enc:secretbox:v1:c"));
    let only_secrets = config("  - identity: {}\n");
    assert!(only_secrets.transformer_for("", "configmaps").is_none());
    assert!(only_secrets.transformer_for("", "secrets").is_some());
}

#[test]
fn bad_configurations_name_the_problem() {
    let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
    let err = |body: &str| EncryptionConfig::parse(&format!("{head}{body}")).unwrap_err();
    let short = base64::engine::general_purpose::STANDARD.encode([1u8; 10]);
    assert!(
        err(&format!(
            "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: k, secret: {short}}}]}}\n"
        ))
        .contains("resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 10")
    );
    assert!(
        err(&format!(
            "resources:\n- resources: [secrets]\n  providers:\n  - secretbox: {{keys: [{{name: k, secret: {}}}]}}\n",
            base64::engine::general_purpose::STANDARD.encode([1u8; 16])
        ))
        .contains("expected one of [32]")
    );
    assert!(
        err("resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: k, secret: '%%%'}]}\n")
            .contains("secrets must be base64 encoded")
    );
    assert!(
        err("resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: []}\n")
            .contains("at least one keys is required")
    );
    assert!(
        err("resources:\n- resources: [secrets]\n  providers:\n  - aescbs: {keys: []}\n")
            .contains("aescbs")
    );
    assert!(
        err("resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: x}\n")
            .contains("KMS provider is not supported")
    );
    assert!(
        err("resources:\n- resources: [secrets]\n  providers:\n  - {identity: {}, aescbc: {keys: []}}\n")
            .contains("more than one provider")
    );
    assert!(
        err("resources:\n- resources: [Secrets]\n  providers: [{identity: {}}]\n")
            .contains("capital letters")
    );
    assert!(
        err("resources:\n- resources: ['*']\n  providers: [{identity: {}}]\n").contains("use '*.'")
    );
    assert!(
        err("resources:\n- resources: [secrets, '*.']\n  providers: [{identity: {}}]\n")
            .contains("overlapping")
    );
    assert!(
        err("resources:\n- resources: ['*.*']\n  providers: [{identity: {}}]\n- resources: [secrets]\n  providers: [{identity: {}}]\n")
            .contains("resource \"secrets\" is masked by earlier rule \"*.*\"")
    );
    assert!(err("resources: []\n").contains("at least one resources"));
    let wrong =
        EncryptionConfig::parse("apiVersion: v1\nkind: EncryptionConfiguration\n").unwrap_err();
    assert!(wrong.contains("apiVersion"), "{wrong}");
    let e = err(&format!(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: \"{KEY32}\"}}\n"
    ));
    assert!(!e.contains(KEY32) && e.contains("line 6"), "{e}");
    let e = err(&format!(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: a, secret: {KEY32}}}]}}\n  - aesgcm: {{keys: [{{name: a, secret: {KEY32}, extra: 1}}]}}\n"
    ));
    assert!(!e.contains(KEY32) && e.contains("extra"), "{e}");
    assert_eq!(
        redacted("error: invalid type: string \"c2Vj\", expected a sequence\n 6 | keys: c2Vj"),
        "error: invalid type: string \"REDACTED\", expected a sequence"
    );
    // The key never appears in an error.
    let e = err(&format!(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: k:1, secret: {KEY32}}}]}}\n"
    ));
    assert!(!e.contains(KEY32), "{e}");
}
