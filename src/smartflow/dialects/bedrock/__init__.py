"""Amazon Bedrock runtime wire formats: Converse, ConverseStream and Claude on InvokeModel."""
