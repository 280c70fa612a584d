// Package coordinator is micado's pure decision core: the paper's
// "microservices coordination logic". It takes an immutable snapshot of the
// cluster (workers with tags, memory capacity, reservations and usage) and a
// request, and returns a decision together with its reasons.
//
// Besides placement (Place, Placer), scale-out (PlanScaleOut, the cheapest
// set of instances when types have prices) and scale-in (PlanConsolidation:
// a repack of the whole cluster within a disruption budget, and the
// replacement of workers by cheaper types), it decides replica counts by
// real load the way the Kubernetes HPA does (DecideScale) and raises alerts
// when a role's real use stays above a limit (RoleAlerts).
//
// It never touches Docker, Consul, the network or the clock: callers pass
// everything in, which keeps every decision reproducible, cheap to test and
// cheap to benchmark at thousands of workers. TestPurity keeps it so.
package coordinator
