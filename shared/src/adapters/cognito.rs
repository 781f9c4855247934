use aws_config::SdkConfig;
use aws_sdk_cognitoidentityprovider::Client;
use aws_sdk_cognitoidentityprovider::operation::get_user::GetUserError;

use super::describe;
use crate::ports::{SessionCheck, Unavailable};

/// Asks Cognito (`GetUser`) whether an access token is still valid: a token that was signed
/// out (`GlobalSignOut`, `RevokeToken`) is refused even before it expires.
#[derive(Clone, Debug)]
pub struct CognitoSessionCheck {
    client: Client,
}

impl CognitoSessionCheck {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            client: Client::new(config),
        }
    }
}

impl SessionCheck for CognitoSessionCheck {
    async fn is_active(&self, access_token: &str) -> Result<bool, Unavailable> {
        match self
            .client
            .get_user()
            .access_token(access_token)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(error) => match error.as_service_error() {
                Some(GetUserError::NotAuthorizedException(_))
                | Some(GetUserError::UserNotFoundException(_))
                | Some(GetUserError::UserNotConfirmedException(_)) => Ok(false),
                _ => Err(Unavailable::new("Cognito GetUser", describe(&error))),
            },
        }
    }
}
