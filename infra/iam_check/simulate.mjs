// Evaluates IAM requests with @cloud-copilot/iam-simulate (pinned in infra/iam_check/simulator.py).
//
// stdin:  {"requests": [{id, principal, action, resource, accountId, context, identityPolicies:
//          [{name, policy}], resourcePolicy | null}]}
// stdout: [{id, result, errors, ignoredContextKeys, identityAllows: [{policy, sid, actions, resources}],
//          resourceAllows: [sid], resourceDenies: [sid], identityOnly, resourceOnly}]
//
// Each request is first given to the library's validating entry point (runSimulation): policy grammar,
// the action, the ARN against the action's resource types, and the context keys the action allows.
// The decision itself comes from the library's engine (authorize) with the full request context,
// because runSimulation's key validation drops every `kms:EncryptionContext:<key>` value (it expands
// only `prefix/variable` keys such as aws:PrincipalTag/x, not `kms:EncryptionContext:${Key}`), and
// without them every token-key request would be judged on a context it does not have.
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const root = process.env.IAM_SIMULATE_NODE_MODULES
if (!root) throw new Error('IAM_SIMULATE_NODE_MODULES is not set')
const pkg = join(root, '@cloud-copilot', 'iam-simulate', 'dist', 'esm')
const load = (rel) => import(pathToFileURL(join(pkg, rel)).href)
const { runSimulation, typeForContextKey, isConditionKeyArray } = await load('index.js')
const { authorize } = await load('core_engine/CoreSimulatorEngine.js')
const { AwsRequestImpl } = await load('request/request.js')
const { RequestContextImpl } = await load('requestContext.js')
const { DiscoveryContextKeyConstraints } = await load('context_keys/discoveryContextKeyConstraints.js')
const { isWildcardOnlyAction } = await load('util.js')
const { loadPolicy } = await import(
  pathToFileURL(join(root, '@cloud-copilot', 'iam-policy', 'dist', 'esm', 'index.js')).href
)

const ENCRYPTION_CONTEXT = /^kms:encryptioncontext:.+/i

async function normalizedContext(context) {
  const values = {}
  for (const [key, value] of Object.entries(context)) {
    let type = 'String'
    if (!ENCRYPTION_CONTEXT.test(key)) type = await typeForContextKey(key.toLowerCase())
    values[key] = isConditionKeyArray(type) ? [value].flat() : Array.isArray(value) ? value[0] : value
  }
  return values
}

const asList = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value])

function matched(explain, field, name) {
  return asList(explain[field])
    .filter((item) => item.matches)
    .map((item) => item[name])
}

async function evaluate(req, identityPolicies, resourcePolicy) {
  const [service, action] = req.action.split(':')
  const wildcardOnly = await isWildcardOnlyAction(service, action)
  const request = new AwsRequestImpl(
    req.principal,
    { resource: req.resource, accountId: req.accountId },
    req.action,
    new RequestContextImpl(await normalizedContext(req.context)),
    wildcardOnly
  )
  return authorize({
    request,
    sessionPolicy: undefined,
    identityPolicies: identityPolicies.map((p) => loadPolicy(p.policy, { name: p.name })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: resourcePolicy ? loadPolicy(resourcePolicy, { name: 'resource' }) : undefined,
    permissionBoundaries: undefined,
    vpcEndpointPolicies: undefined,
    simulationParameters: {
      simulationMode: 'Strict',
      discoveryContextKeyConstraints: new DiscoveryContextKeyConstraints([])
    },
    serviceSettings: { s3: { blockPublicAccess: undefined } }
  })
}

async function one(req) {
  const simulation = {
    request: {
      principal: req.principal,
      action: req.action,
      resource: { resource: req.resource, accountId: req.accountId },
      contextVariables: req.context
    },
    identityPolicies: req.identityPolicies,
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    ...(req.resourcePolicy ? { resourcePolicy: req.resourcePolicy } : {})
  }
  const validation = await runSimulation(simulation, {})
  if (validation.resultType === 'error') {
    return { id: req.id, result: 'Error', errors: validation.errors }
  }
  const ignored = (validation.result?.ignoredContextKeys ?? validation.results?.[0]?.ignoredContextKeys ?? [])
    .filter((key) => !ENCRYPTION_CONTEXT.test(key))
  const analysis = await evaluate(req, req.identityPolicies, req.resourcePolicy)
  const identity = analysis.identityAnalysis ?? { allowStatements: [] }
  const resource = analysis.resourceAnalysis ?? { allowStatements: [], denyStatements: [] }
  const answer = {
    id: req.id,
    result: analysis.result,
    ignoredContextKeys: ignored,
    identityAllows: identity.allowStatements.map((s) => ({
      policy: s.policyId,
      sid: s.explain.identifier,
      actions: matched(s.explain, 'actions', 'action'),
      resources: matched(s.explain, 'resources', 'resource')
    })),
    resourceAllows: (resource.allowStatements ?? []).map((s) => s.explain.identifier),
    resourceDenies: (resource.denyStatements ?? []).map((s) => s.explain.identifier)
  }
  if (analysis.result !== 'Allowed') {
    // Which side refuses: the identity policies alone, and the resource policy alone.
    answer.identityOnly = (await evaluate(req, req.identityPolicies, undefined)).result
    if (req.resourcePolicy) answer.resourceOnly = (await evaluate(req, [], req.resourcePolicy)).result
  }
  return answer
}

let input = ''
for await (const chunk of process.stdin) input += chunk
const { requests } = JSON.parse(input)
const results = []
for (const req of requests) results.push(await one(req))
process.stdout.write(JSON.stringify(results))
