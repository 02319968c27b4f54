// Package epp holds the manifests of kvroute as a Gateway API Inference Extension
// endpoint picker (kvroute epp, router/epp): its Deployment, Service, RBAC and config,
// and an example InferencePool naming it. The manifests are decoded strictly and
// checked against each other in manifests_test.go; the package has no Go code.
package epp
