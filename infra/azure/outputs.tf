output "cluster_name" {
  value = azurerm_kubernetes_cluster.main.name
}

output "resource_group" {
  value = azurerm_resource_group.main.name
}

output "redis_host" {
  value = azurerm_redis_cache.main.hostname
}

output "postgres_host" {
  value = azurerm_postgresql_flexible_server.main.fqdn
}

output "storage_account" {
  value = azurerm_storage_account.blobs.name
}

output "workload_client_id" {
  description = "Annotate the ServiceAccount biofleet with azure.workload.identity/client-id = this."
  value       = azurerm_user_assigned_identity.workload.client_id
}
