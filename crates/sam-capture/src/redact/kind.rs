//! The types of finding and their placeholders.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! kinds {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $placeholder:literal; )*) => {
        /// The type of a finding; each has its placeholder.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum SecretKind {
            $( $(#[$doc])* $variant, )*
        }

        impl SecretKind {
            /// Every kind.
            pub const ALL: &'static [SecretKind] = &[ $( SecretKind::$variant, )* ];

            /// The snake_case name (`email`, `aws_key`, …), as in `sam.toml`.
            pub fn as_str(self) -> &'static str {
                match self { $( SecretKind::$variant => $name, )* }
            }

            /// The placeholder that replaces a finding of this kind.
            pub fn placeholder(self) -> &'static str {
                match self { $( SecretKind::$variant => $placeholder, )* }
            }
        }
    };
}

kinds! {
    /// An email address.
    Email => "email", "<EMAIL>";
    /// A phone number: E.164 and other international forms (spaced,
    /// dotted, dashed), North American forms, national forms next to a
    /// word such as `phone`.
    Phone => "phone", "<PHONE>";
    /// A US social security number.
    Ssn => "ssn", "<SSN>";
    /// A payment card number (Luhn-checked, issuer prefix and length).
    CreditCard => "credit_card", "<CREDIT_CARD>";
    /// An IPv4 host address (loopback, unspecified, netmasks and network
    /// addresses are kept).
    Ipv4 => "ipv4", "<IPV4>";
    /// An IPv6 host address, compressed forms included (loopback and
    /// unspecified are kept).
    Ipv6 => "ipv6", "<IPV6>";
    /// An international bank account number (mod-97-checked).
    Iban => "iban", "<IBAN>";
    /// An AWS access key id (long-term `AKIA…` or temporary `ASIA…`).
    AwsKey => "aws_key", "<AWS_KEY>";
    /// An AWS secret access key.
    AwsSecret => "aws_secret", "<AWS_SECRET>";
    /// An AWS session token (the third part of temporary credentials).
    AwsSessionToken => "aws_session_token", "<AWS_SESSION_TOKEN>";
    /// An Azure storage account key, shared access key or signature, or an
    /// Azure AD client secret.
    AzureKey => "azure_key", "<AZURE_KEY>";
    /// A Google Cloud credential: a service account's key id, an OAuth
    /// client secret or access token.
    GcpCredential => "gcp_credential", "<GCP_CREDENTIAL>";
    /// A GitHub token: classic, fine-grained, OAuth, app or refresh.
    GithubToken => "github_token", "<GITHUB_TOKEN>";
    /// A GitLab token (personal, deploy, runner, pipeline trigger, …).
    GitlabToken => "gitlab_token", "<GITLAB_TOKEN>";
    /// A Hugging Face access token.
    HuggingfaceToken => "huggingface_token", "<HF_TOKEN>";
    /// An npm access token.
    NpmToken => "npm_token", "<NPM_TOKEN>";
    /// A PyPI upload token.
    PypiToken => "pypi_token", "<PYPI_TOKEN>";
    /// A Slack token or webhook URL.
    SlackToken => "slack_token", "<SLACK_TOKEN>";
    /// A Stripe secret or restricted key, or a webhook signing secret.
    StripeKey => "stripe_key", "<STRIPE_KEY>";
    /// A SendGrid API key.
    SendgridKey => "sendgrid_key", "<SENDGRID_KEY>";
    /// A Twilio API key or auth token.
    TwilioKey => "twilio_key", "<TWILIO_KEY>";
    /// An OpenAI API key.
    OpenaiKey => "openai_key", "<OPENAI_KEY>";
    /// An Anthropic API key.
    AnthropicKey => "anthropic_key", "<ANTHROPIC_KEY>";
    /// A Google API key.
    GoogleApiKey => "google_api_key", "<GOOGLE_API_KEY>";
    /// A private key block: PEM (RSA, EC, DSA, PKCS#8, encrypted),
    /// OpenSSH, PGP, PuTTY, age.
    PrivateKey => "private_key", "<PRIVATE_KEY>";
    /// A JSON web token.
    Jwt => "jwt", "<JWT>";
    /// A password: the value of a password assignment in any common
    /// syntax, a password flag, or the password in a URL.
    Password => "password", "<PASSWORD>";
    /// Another credential: the value of a secret, token or key assignment,
    /// a bearer or basic credential, a token of a known shape with no kind
    /// of its own.
    Secret => "secret", "<SECRET>";
    /// A random-looking string (high Shannon entropy, mixed character
    /// classes) with nothing else to say what it is.
    HighEntropy => "high_entropy", "<TOKEN>";
    /// The user name in a home-directory path.
    HomePath => "home_path", "<USER>";
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SecretKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SecretKind::ALL.iter().copied().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown secret kind {s:?}"))
    }
}

/// Whether `s` is one of the placeholders redaction writes.
pub(crate) fn is_placeholder_token(s: &str) -> bool {
    SecretKind::ALL.iter().any(|k| k.placeholder() == s)
}
