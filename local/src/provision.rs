//! Creates the pipeline's AWS resources, as the SAM template declares them.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;
use pipeline::adapters::{OWNER_INDEX, UNFINISHED_INDEX, describe};

/// Deliveries before SQS moves a message to the dead-letter queue. Above the worker's
/// `MAX_ATTEMPTS` (3), so that the worker decides a job's fate before SQS gives up on it.
pub const MAX_RECEIVE_COUNT: u32 = 5;

/// The names to create.
#[derive(Clone, Debug)]
pub struct Names {
    pub table: String,
    pub queue: String,
    pub bucket: String,
}

impl Names {
    /// `{prefix}-jobs`, `{prefix}-jobs` queue (+ `-dlq`), `{prefix}-artifacts`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            table: format!("{prefix}-jobs"),
            queue: format!("{prefix}-jobs"),
            bucket: format!("{prefix}-artifacts"),
        }
    }
}

/// What was created, with the identifiers the functions are configured with.
#[derive(Clone, Debug)]
pub struct Resources {
    pub table: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub dead_letter_queue_url: String,
    pub dead_letter_queue_arn: String,
    pub bucket: String,
}

#[derive(Debug, thiserror::Error)]
#[error("could not create {what}: {detail}")]
pub struct ProvisionError {
    what: String,
    detail: String,
}

fn failed(what: impl Into<String>) -> impl FnOnce(String) -> ProvisionError {
    let what = what.into();
    move |detail| ProvisionError { what, detail }
}

/// Creates the table (with its owner index, its index of unfinished jobs and TTL), the queue with its dead-letter queue,
/// and the artifacts bucket; what exists already is kept. `visibility_timeout_secs` is the
/// jobs queue's.
pub async fn provision(
    config: &SdkConfig,
    names: &Names,
    visibility_timeout_secs: u32,
) -> Result<Resources, ProvisionError> {
    create_table(config, &names.table).await?;
    let queues = create_queues(config, &names.queue, visibility_timeout_secs).await?;
    create_bucket(config, &names.bucket).await?;
    Ok(Resources {
        table: names.table.clone(),
        queue_url: queues.url,
        queue_arn: queues.arn,
        dead_letter_queue_url: queues.dead_letter_url,
        dead_letter_queue_arn: queues.dead_letter_arn,
        bucket: names.bucket.clone(),
    })
}

async fn create_table(config: &SdkConfig, table: &str) -> Result<(), ProvisionError> {
    let client = aws_sdk_dynamodb::Client::new(config);
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type are set")
    };
    let key = |name: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(key_type)
            .build()
            .expect("name and type are set")
    };
    let index = |name: &str, hash: &str, range: &str, projection: ProjectionType| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(hash, KeyType::Hash))
            .key_schema(key(range, KeyType::Range))
            .projection(Projection::builder().projection_type(projection).build())
            .build()
            .map_err(|e| failed(format!("the index {name}"))(e.to_string()))
    };
    let owner_index = index(OWNER_INDEX, "owner", "created_at", ProjectionType::All)?;
    let unfinished_index = index(
        UNFINISHED_INDEX,
        "unfinished",
        "updated_at",
        ProjectionType::KeysOnly,
    )?;
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("job_id"))
        .attribute_definitions(attribute("owner"))
        .attribute_definitions(attribute("created_at"))
        .attribute_definitions(attribute("unfinished"))
        .attribute_definitions(attribute("updated_at"))
        .key_schema(key("job_id", KeyType::Hash))
        .global_secondary_indexes(owner_index)
        .global_secondary_indexes(unfinished_index)
        .send()
        .await;
    match created {
        Ok(_) => {}
        // An emulator that outlives the local stack (--aws-endpoint) keeps the table.
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            return Ok(());
        }
        Err(e) => return Err(failed(format!("table {table}"))(describe(&e))),
    }
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()
                .expect("name and flag are set"),
        )
        .send()
        .await
        .map_err(|e| failed(format!("TTL on table {table}"))(describe(&e)))?;
    Ok(())
}

async fn create_queues(
    config: &SdkConfig,
    queue: &str,
    visibility_timeout_secs: u32,
) -> Result<Queues, ProvisionError> {
    let client = aws_sdk_sqs::Client::new(config);
    let dead_letter_queue = format!("{queue}-dlq");
    let dlq_url = client
        .create_queue()
        .queue_name(&dead_letter_queue)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| failed(format!("queue {dead_letter_queue}"))(describe(&e)))?
        .queue_url
        .unwrap_or_default();
    let dlq_arn = queue_arn(&client, &dlq_url).await?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
    });
    let queue_url = client
        .create_queue()
        .queue_name(queue)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_secs.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .map_err(|e| failed(format!("queue {queue}"))(describe(&e)))?
        .queue_url
        .unwrap_or_default();
    let arn = queue_arn(&client, &queue_url).await?;
    Ok(Queues {
        url: queue_url,
        arn,
        dead_letter_url: dlq_url,
        dead_letter_arn: dlq_arn,
    })
}

struct Queues {
    url: String,
    arn: String,
    dead_letter_url: String,
    dead_letter_arn: String,
}

async fn queue_arn(client: &aws_sdk_sqs::Client, url: &str) -> Result<String, ProvisionError> {
    let attributes = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| failed(format!("the ARN of {url}"))(describe(&e)))?;
    attributes
        .attributes
        .and_then(|mut map| map.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| failed(format!("the ARN of {url}"))("no QueueArn attribute".into()))
}

async fn create_bucket(config: &SdkConfig, bucket: &str) -> Result<(), ProvisionError> {
    let s3 = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(s3);
    let region = config.region().map(|r| r.as_ref().to_owned());
    // us-east-1 is the one region that refuses an explicit location constraint.
    let location = region.filter(|region| region != "us-east-1").map(|region| {
        CreateBucketConfiguration::builder()
            .location_constraint(BucketLocationConstraint::from(region.as_str()))
            .build()
    });
    match client
        .create_bucket()
        .bucket(bucket)
        .set_create_bucket_configuration(location)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_bucket_already_owned_by_you()) =>
        {
            Ok(())
        }
        Err(e) => Err(failed(format!("bucket {bucket}"))(describe(&e))),
    }
}

/// A Cognito user pool and its web app client.
#[derive(Clone, Debug)]
pub struct UserPool {
    pub pool_id: String,
    pub client_id: String,
}

/// A user pool configured like the template's (e-mail as user name, e-mail verification, the
/// same password policy) and an app client without secret for the web UI.
pub async fn create_user_pool(config: &SdkConfig, name: &str) -> Result<UserPool, ProvisionError> {
    use aws_sdk_cognitoidentityprovider::types::{
        ExplicitAuthFlowsType, PasswordPolicyType, TimeUnitsType, TokenValidityUnitsType,
        UserPoolPolicyType, UsernameAttributeType, VerifiedAttributeType,
    };
    let client = aws_sdk_cognitoidentityprovider::Client::new(config);
    let password_policy = PasswordPolicyType::builder()
        .minimum_length(12)
        .require_lowercase(true)
        .require_uppercase(true)
        .require_numbers(true)
        .require_symbols(true)
        .build();
    let pool_id = client
        .create_user_pool()
        .pool_name(name)
        .username_attributes(UsernameAttributeType::Email)
        .auto_verified_attributes(VerifiedAttributeType::Email)
        .policies(
            UserPoolPolicyType::builder()
                .password_policy(password_policy)
                .build(),
        )
        .send()
        .await
        .map_err(|e| failed(format!("user pool {name}"))(describe(&e)))?
        .user_pool
        .and_then(|pool| pool.id)
        .unwrap_or_default();
    let client_id = client
        .create_user_pool_client()
        .user_pool_id(&pool_id)
        .client_name("web")
        .generate_secret(false)
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowUserPasswordAuth)
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowUserSrpAuth)
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
        .access_token_validity(60)
        .id_token_validity(60)
        .refresh_token_validity(30)
        .token_validity_units(
            TokenValidityUnitsType::builder()
                .access_token(TimeUnitsType::Minutes)
                .id_token(TimeUnitsType::Minutes)
                .refresh_token(TimeUnitsType::Days)
                .build(),
        )
        .send()
        .await
        .map_err(|e| failed("the web app client")(describe(&e)))?
        .user_pool_client
        .and_then(|client| client.client_id)
        .unwrap_or_default();
    Ok(UserPool { pool_id, client_id })
}

/// A confirmed user with a permanent password, ready to sign in.
pub async fn create_user(
    config: &SdkConfig,
    pool: &UserPool,
    email: &str,
    password: &str,
) -> Result<(), ProvisionError> {
    use aws_sdk_cognitoidentityprovider::types::{AttributeType, MessageActionType};
    let client = aws_sdk_cognitoidentityprovider::Client::new(config);
    let attribute = |name: &str, value: &str| {
        AttributeType::builder()
            .name(name)
            .value(value)
            .build()
            .expect("name is set")
    };
    client
        .admin_create_user()
        .user_pool_id(&pool.pool_id)
        .username(email)
        .user_attributes(attribute("email", email))
        .user_attributes(attribute("email_verified", "true"))
        .message_action(MessageActionType::Suppress)
        .send()
        .await
        .map_err(|e| failed(format!("user {email}"))(describe(&e)))?;
    client
        .admin_set_user_password()
        .user_pool_id(&pool.pool_id)
        .username(email)
        .password(password)
        .permanent(true)
        .send()
        .await
        .map_err(|e| failed(format!("the password of {email}"))(describe(&e)))?;
    Ok(())
}
