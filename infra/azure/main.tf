# AKS with a GPU node pool and the KEDA add-on, Azure Cache for Redis, Azure Database for
# PostgreSQL flexible server with pgvector (private, in the cluster's virtual network), and a
# storage account for images. The infra/k8s manifests run on the cluster (infra/README.md, AKS).

resource "azurerm_resource_group" "main" {
  name     = "${var.name}-rg"
  location = var.location
}

resource "azurerm_virtual_network" "main" {
  name                = "${var.name}-vnet"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  address_space       = ["10.40.0.0/16"]
}

resource "azurerm_subnet" "aks" {
  name                 = "aks"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = ["10.40.0.0/20"]
}

resource "azurerm_subnet" "postgres" {
  name                 = "postgres"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = ["10.40.16.0/24"]
  delegation {
    name = "postgres"
    service_delegation {
      name    = "Microsoft.DBforPostgreSQL/flexibleServers"
      actions = ["Microsoft.Network/virtualNetworks/subnets/join/action"]
    }
  }
}

# --- Kubernetes ----------------------------------------------------------------------------------

resource "azurerm_kubernetes_cluster" "main" {
  name                      = "${var.name}-aks"
  location                  = azurerm_resource_group.main.location
  resource_group_name       = azurerm_resource_group.main.name
  dns_prefix                = var.name
  kubernetes_version        = var.kubernetes_version
  oidc_issuer_enabled       = true
  workload_identity_enabled = true

  default_node_pool {
    name           = "system"
    vm_size        = var.system_vm_size
    node_count     = var.system_node_count
    vnet_subnet_id = azurerm_subnet.aks.id
  }

  identity {
    type = "SystemAssigned"
  }

  network_profile {
    network_plugin = "azure"
    service_cidr   = "10.41.0.0/16"
    dns_service_ip = "10.41.0.10"
  }

  # The KEDA add-on: the worker ScaledObject in infra/k8s/keda.yaml.
  workload_autoscaler_profile {
    keda_enabled = true
  }

  # Azure Monitor managed Prometheus can scrape the pods' prometheus.io/* annotations.
  monitor_metrics {}

  storage_profile {
    blob_driver_enabled = true # mounts the images container into the pods (BIOFLEET_BLOB_URL=file://)
  }
}

# One worker per GPU node; AKS installs the NVIDIA driver, NVIDIA's device plugin advertises the GPU.
resource "azurerm_kubernetes_cluster_node_pool" "gpu" {
  name                  = "gpu"
  kubernetes_cluster_id = azurerm_kubernetes_cluster.main.id
  vm_size               = var.gpu_vm_size
  vnet_subnet_id        = azurerm_subnet.aks.id
  auto_scaling_enabled  = true
  min_count             = 0
  max_count             = var.max_gpu_nodes
  node_labels           = { "biofleet.io/pool" = "gpu" }
  node_taints           = ["sku=gpu:NoSchedule"]
  priority              = var.gpu_spot ? "Spot" : "Regular"
  eviction_policy       = var.gpu_spot ? "Delete" : null
  spot_max_price        = var.gpu_spot ? -1 : null
}

# --- Redis ---------------------------------------------------------------------------------------

resource "azurerm_redis_cache" "main" {
  name                 = "${var.name}-redis"
  location             = azurerm_resource_group.main.location
  resource_group_name  = azurerm_resource_group.main.name
  sku_name             = var.redis_sku
  family               = var.redis_sku == "Premium" ? "P" : "C"
  capacity             = var.redis_capacity
  non_ssl_port_enabled = false
  minimum_tls_version  = "1.2"
  redis_configuration {
    maxmemory_policy = "noeviction" # never drop a queued message to make room
  }
}

# --- Postgres ------------------------------------------------------------------------------------

resource "azurerm_private_dns_zone" "postgres" {
  name                = "${var.name}.postgres.database.azure.com"
  resource_group_name = azurerm_resource_group.main.name
}

resource "azurerm_private_dns_zone_virtual_network_link" "postgres" {
  name                  = "${var.name}-postgres"
  resource_group_name   = azurerm_resource_group.main.name
  private_dns_zone_name = azurerm_private_dns_zone.postgres.name
  virtual_network_id    = azurerm_virtual_network.main.id
}

resource "azurerm_postgresql_flexible_server" "main" {
  name                          = "${var.name}-pg"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  version                       = "16"
  sku_name                      = var.postgres_sku
  storage_mb                    = var.postgres_storage_mb
  administrator_login           = var.postgres_admin_login
  administrator_password        = var.postgres_admin_password
  delegated_subnet_id           = azurerm_subnet.postgres.id
  private_dns_zone_id           = azurerm_private_dns_zone.postgres.id
  public_network_access_enabled = false
  backup_retention_days         = 7
  zone                          = "1"
  depends_on                    = [azurerm_private_dns_zone_virtual_network_link.postgres]
}

# pgvector: allow-list the extension; the migrations run CREATE EXTENSION vector.
resource "azurerm_postgresql_flexible_server_configuration" "extensions" {
  name      = "azure.extensions"
  server_id = azurerm_postgresql_flexible_server.main.id
  value     = "VECTOR"
}

resource "azurerm_postgresql_flexible_server_database" "biofleet" {
  name      = "biofleet"
  server_id = azurerm_postgresql_flexible_server.main.id
  charset   = "UTF8"
  collation = "en_US.utf8"
}

# --- Blobs ---------------------------------------------------------------------------------------

resource "random_string" "storage" {
  length  = 6
  upper   = false
  special = false
}

resource "azurerm_storage_account" "blobs" {
  name                            = "${var.name}${random_string.storage.result}"
  location                        = azurerm_resource_group.main.location
  resource_group_name             = azurerm_resource_group.main.name
  account_tier                    = "Standard"
  account_replication_type        = "ZRS"
  min_tls_version                 = "TLS1_2"
  allow_nested_items_to_be_public = false
  https_traffic_only_enabled      = true
}

resource "azurerm_storage_container" "images" {
  name                  = "images"
  storage_account_id    = azurerm_storage_account.blobs.id
  container_access_type = "private"
}

resource "azurerm_storage_management_policy" "retention" {
  storage_account_id = azurerm_storage_account.blobs.id
  rule {
    name    = "expire-images"
    enabled = true
    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["images/"]
    }
    actions {
      base_blob {
        delete_after_days_since_modification_greater_than = var.retention_days
      }
    }
  }
}

# --- Workload identity: the ServiceAccount biofleet reads and writes the images container -------

resource "azurerm_user_assigned_identity" "workload" {
  name                = "${var.name}-workload"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
}

resource "azurerm_federated_identity_credential" "workload" {
  name                = "${var.name}-workload"
  resource_group_name = azurerm_resource_group.main.name
  parent_id           = azurerm_user_assigned_identity.workload.id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject             = "system:serviceaccount:biofleet:biofleet"
}

resource "azurerm_role_assignment" "blobs" {
  scope                = azurerm_storage_container.images.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.workload.principal_id
}
