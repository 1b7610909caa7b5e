//! The value transformers: kube-apiserver's on-disk formats for `aescbc`, `aesgcm` and
//! `secretbox` (`k8s:enc:<provider>:v1:<key>:`), and `identity`.

use super::config::*;
use super::*;

/// The providers of one resource: the first writes, any of them reads.
pub struct Transformer {
    pub(super) providers: Vec<Provider>,
}

impl Transformer {
    /// The value to store for `plaintext` at store key `key`.
    pub fn to_storage(
        &self,
        key: &str,
        plaintext: &[u8],
    ) -> std::result::Result<Vec<u8>, TransformError> {
        let Some(provider) = self.providers.first() else {
            return Ok(plaintext.to_vec());
        };
        let name = provider.name();
        let encrypt_err = |reason: String| TransformError::Encrypt {
            provider: name,
            reason,
        };
        let (key_name, sealed) = match provider {
            Provider::Identity => return Ok(plaintext.to_vec()),
            Provider::AesCbc(keys) => {
                let k = first_key(keys, name)?;
                (
                    &k.name,
                    cbc_encrypt(&k.key, plaintext).map_err(&encrypt_err)?,
                )
            }
            Provider::AesGcm(keys) => {
                let k = first_key(keys, name)?;
                let sealed = gcm_seal(&k.key, plaintext, key.as_bytes()).map_err(&encrypt_err)?;
                (&k.name, sealed)
            }
            Provider::Secretbox(keys) => {
                let k = first_key(keys, name)?;
                let sealed = secretbox_seal(&k.key, plaintext).map_err(&encrypt_err)?;
                (&k.name, sealed)
            }
        };
        let prefix = provider.prefix();
        let mut out = Vec::with_capacity(prefix.len() + key_name.len() + 1 + sealed.len());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(key_name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of the value stored at `key`: the providers are tried in order, each by its
    /// prefix and key name; `identity` reads only unencrypted data.
    pub fn from_storage(
        &self,
        key: &str,
        data: &[u8],
    ) -> std::result::Result<Vec<u8>, TransformError> {
        let mut error = None;
        for provider in &self.providers {
            let attempt = match provider {
                Provider::Identity => {
                    if data.starts_with(ENCRYPTED_PREFIX) {
                        error.get_or_insert(TransformError::EncryptedData);
                        continue;
                    }
                    return Ok(data.to_vec());
                }
                Provider::AesCbc(keys) => open_with(provider, keys, data, cbc_decrypt),
                Provider::AesGcm(keys) => open_with(provider, keys, data, |k, body| {
                    gcm_open(k, body, key.as_bytes())
                }),
                Provider::Secretbox(keys) => open_with(provider, keys, data, secretbox_open),
            };
            match attempt {
                Some(Ok(plaintext)) => return Ok(plaintext),
                Some(Err(e)) => error = Some(e),
                None => {}
            }
        }
        Err(error.unwrap_or(TransformError::NoMatchingPrefix))
    }
}

pub(super) fn first_key<'a, K>(
    keys: &'a [NamedKey<K>],
    provider: &'static str,
) -> std::result::Result<&'a NamedKey<K>, TransformError> {
    keys.first().ok_or(TransformError::Encrypt {
        provider,
        reason: "no key".into(),
    })
}

/// Tries the keys of `provider` whose `<prefix><name>:` starts `data`; None when none does.
pub(super) fn open_with<K>(
    provider: &Provider,
    keys: &[NamedKey<K>],
    data: &[u8],
    open: impl Fn(&K, &[u8]) -> std::result::Result<Vec<u8>, String>,
) -> Option<std::result::Result<Vec<u8>, TransformError>> {
    let rest = data.strip_prefix(provider.prefix().as_bytes())?;
    let mut result = None;
    for k in keys {
        let Some(body) = rest
            .strip_prefix(k.name.as_bytes())
            .and_then(|r| r.strip_prefix(b":"))
        else {
            continue;
        };
        match open(&k.key, body) {
            Ok(plaintext) => return Some(Ok(plaintext)),
            Err(reason) => {
                result = Some(Err(TransformError::Decrypt {
                    provider: provider.name(),
                    key: k.name.clone(),
                    reason,
                }));
            }
        }
    }
    Some(result.unwrap_or_else(|| {
        Err(TransformError::Decrypt {
            provider: provider.name(),
            key: String::from_utf8_lossy(rest.split(|b| *b == b':').next().unwrap_or_default())
                .into_owned(),
            reason: format!(
                "no matching key was found for the provided {} transformer",
                provider.name()
            ),
        })
    }))
}

pub(super) fn cbc_encrypt(key: &AesKey, plaintext: &[u8]) -> std::result::Result<Vec<u8>, String> {
    fn run<C>(
        key: &[u8],
        iv: &[u8; AES_BLOCK],
        plaintext: &[u8],
    ) -> std::result::Result<Vec<u8>, String>
    where
        C: BlockCipherEncrypt,
        cbc::Encryptor<C>: KeyIvInit + BlockModeEncrypt,
    {
        let encryptor = cbc::Encryptor::<C>::new_from_slices(key, iv).map_err(|e| e.to_string())?;
        Ok(encryptor.encrypt_padded_vec::<Pkcs7>(plaintext))
    }
    let iv: [u8; AES_BLOCK] = rand::random();
    let body = match key {
        AesKey::Aes128(k) => run::<aes::Aes128>(k, &iv, plaintext),
        AesKey::Aes192(k) => run::<aes::Aes192>(k, &iv, plaintext),
        AesKey::Aes256(k) => run::<aes::Aes256>(k, &iv, plaintext),
    }?;
    let mut out = Vec::with_capacity(AES_BLOCK + body.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(&body);
    Ok(out)
}

pub(super) fn cbc_decrypt(key: &AesKey, data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    fn run<C>(key: &[u8], iv: &[u8], body: &[u8]) -> std::result::Result<Vec<u8>, String>
    where
        C: BlockCipherDecrypt,
        cbc::Decryptor<C>: KeyIvInit + BlockModeDecrypt,
    {
        cbc::Decryptor::<C>::new_from_slices(key, iv)
            .map_err(|e| e.to_string())?
            .decrypt_padded_vec::<Pkcs7>(body)
            .map_err(|_| "invalid padding on input".to_string())
    }
    if data.len() < AES_BLOCK {
        return Err("the stored data was shorter than the required size".into());
    }
    let (iv, body) = data.split_at(AES_BLOCK);
    if body.is_empty() || body.len() % AES_BLOCK != 0 {
        return Err("the stored data is not a multiple of the block size".into());
    }
    match key {
        AesKey::Aes128(k) => run::<aes::Aes128>(k, iv, body),
        AesKey::Aes192(k) => run::<aes::Aes192>(k, iv, body),
        AesKey::Aes256(k) => run::<aes::Aes256>(k, iv, body),
    }
}

pub(super) type Gcm<C> = AesGcm<C, aes_gcm::aead::consts::U12>;

pub(super) fn gcm_seal(
    key: &AesKey,
    plaintext: &[u8],
    aad: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    fn run<A: Aead + KeyInit>(
        key: &[u8],
        nonce: &[u8; GCM_NONCE],
        msg: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Vec<u8>, String>
    where
        for<'a> &'a aes_gcm::aead::Nonce<A>: TryFrom<&'a [u8]>,
    {
        let aead = A::new_from_slice(key).map_err(|e| e.to_string())?;
        let nonce: &aes_gcm::aead::Nonce<A> = nonce[..]
            .try_into()
            .map_err(|_| "bad nonce size".to_string())?;
        aead.encrypt(nonce, Payload { msg, aad })
            .map_err(|_| "AES-GCM seal failed".to_string())
    }
    let nonce: [u8; GCM_NONCE] = rand::random();
    let sealed = match key {
        AesKey::Aes128(k) => run::<Gcm<aes::Aes128>>(k, &nonce, plaintext, aad),
        AesKey::Aes192(k) => run::<Gcm<aes::Aes192>>(k, &nonce, plaintext, aad),
        AesKey::Aes256(k) => run::<Gcm<aes::Aes256>>(k, &nonce, plaintext, aad),
    }?;
    let mut out = Vec::with_capacity(GCM_NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

pub(super) fn gcm_open(
    key: &AesKey,
    data: &[u8],
    aad: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    fn run<A: Aead + KeyInit>(
        key: &[u8],
        nonce: &[u8],
        msg: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Vec<u8>, String>
    where
        for<'a> &'a aes_gcm::aead::Nonce<A>: TryFrom<&'a [u8]>,
    {
        let aead = A::new_from_slice(key).map_err(|e| e.to_string())?;
        let nonce: &aes_gcm::aead::Nonce<A> =
            nonce.try_into().map_err(|_| "bad nonce size".to_string())?;
        aead.decrypt(nonce, Payload { msg, aad })
            .map_err(|_| "message authentication failed".to_string())
    }
    if data.len() < GCM_NONCE {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, body) = data.split_at(GCM_NONCE);
    match key {
        AesKey::Aes128(k) => run::<Gcm<aes::Aes128>>(k, nonce, body, aad),
        AesKey::Aes192(k) => run::<Gcm<aes::Aes192>>(k, nonce, body, aad),
        AesKey::Aes256(k) => run::<Gcm<aes::Aes256>>(k, nonce, body, aad),
    }
}

pub(super) fn secretbox_seal(
    key: &[u8; 32],
    plaintext: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    use crypto_secretbox::aead::Aead as _;
    use crypto_secretbox::{KeyInit as _, Nonce, XSalsa20Poly1305};
    let nonce: [u8; SECRETBOX_NONCE] = rand::random();
    let boxed = XSalsa20Poly1305::new(&(*key).into())
        .encrypt(&Nonce::from(nonce), plaintext)
        .map_err(|_| "secretbox seal failed".to_string())?;
    let mut out = Vec::with_capacity(SECRETBOX_NONCE + boxed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&boxed);
    Ok(out)
}

pub(super) fn secretbox_open(key: &[u8; 32], data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    use crypto_secretbox::aead::Aead as _;
    use crypto_secretbox::{KeyInit as _, Nonce, XSalsa20Poly1305};
    if data.len() < SECRETBOX_NONCE + SECRETBOX_TAG {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, body) = data.split_at(SECRETBOX_NONCE);
    let nonce: [u8; SECRETBOX_NONCE] =
        nonce.try_into().map_err(|_| "bad nonce size".to_string())?;
    XSalsa20Poly1305::new(&(*key).into())
        .decrypt(&Nonce::from(nonce), body)
        .map_err(|_| "message authentication failed".to_string())
}
