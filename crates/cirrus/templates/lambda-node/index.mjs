// {{name}}: a Lambda handler on Cirrus's {{runtime}} runtime. Over /fn it receives an
// API Gateway HTTP API (2.0) event and answers with statusCode, headers and body.

export const handler = async (event, context) => {
  const name = (event.body || "").trim() || "world";
  return {
    statusCode: 200,
    headers: { "content-type": "text/plain; charset=utf-8" },
    body: `Hello, ${name}! (request ${context.awsRequestId})\n`,
  };
};
